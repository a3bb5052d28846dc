"""Kubernetes manifests for serving a bundle: what ``terrazzo deploy k8s`` writes.

One placed bundle becomes (names are ``tz-<model>`` plus a suffix):

- ``Secret <app>-internal``: the token the gateway and the stage workers share (never in argv).
- ``ConfigMap <app>-trust``: the public key that signed the bundle (checked by ``deploy`` on
  this machine against the local trust), mounted at ``/etc/terrazzo/trusted`` with
  ``TERRAZZO_TRUST`` pointing there: every pod verifies the bundle before loading code. An
  unsigned bundle deploys only with ``--allow-unsigned``, and its pods then run with it too.
- per stage: a headless ``Service <app>-s<i>`` and a ``StatefulSet <app>-s<i>`` with the plan's
  replica count. Each pod runs ``terrazzo worker BUNDLE --stage i``, is pinned to its device
  class by ``nodeSelector: terrazzo.dev/device-class=<class>``, asks for the accelerator the
  stage's build targets (``nvidia.com/gpu``, ``amd.com/gpu``, ``habana.ai/gaudi``) and tolerates
  its taint. A StatefulSet rather than a Deployment because every replica needs a stable DNS
  name (``<app>-s<i>-<k>.<app>-s<i>``): the gateway balances over, health-checks and ejects
  replicas one by one, exactly as it does with local worker processes.
- ``Deployment <app>-gateway`` + ``Service <app>``: ``terrazzo serve BUNDLE --worker i=ADDR ...``
  (KServe v2 gRPC on 8001, Prometheus on 8002).
- the bundle is read from a volume (a PersistentVolumeClaim, read-only at ``/models``); a
  ConfigMap cannot hold it (1 MiB limit).
- liveness/readiness: Kubernetes' built-in gRPC probe on ``grpc.health.v1``, which the gateway
  and every worker serve.

``--ray`` writes the KubeRay alternative instead: a ``RayCluster`` with one worker group per
device class, each Ray node advertising ``devclass_<name>`` (the resource the Ray launcher's
actors request), and the gateway Deployment running ``terrazzo serve --ray ray://<head>:10001``.
It is a RayCluster, not a RayService: RayService deploys Ray Serve applications, and
Terrazzo's gateway is a KServe v2 server of its own that places actors on the cluster.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from terrazzo.runtime.plan import devclass_resource

DEVICE_CLASS_LABEL = "terrazzo.dev/device-class"
WORKER_PORT = 9000
GATEWAY_PORT = 8001
METRICS_PORT = 8002
RAY_CLIENT_PORT = 10001
MODELS_DIR = "/models"
TRUST_DIR = "/etc/terrazzo/trusted"

# Accelerator resource names of the device plugins (NVIDIA, AMD, Intel Gaudi) by build target.
_ACCELERATOR_BY_KIND = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "hpu": "habana.ai/gaudi"}


@dataclass(frozen=True, slots=True)
class K8sOptions:
    """Knobs of the generated manifests.

    Attributes:
        image: container image holding the serving install (see the repository's Dockerfile).
        namespace: namespace of every object (None: the one kubectl uses).
        bundle_claim: PersistentVolumeClaim that holds the bundles, mounted at /models.
        gateway_replicas: gateway pods.
        ray: write the KubeRay RayCluster alternative instead of per-stage StatefulSets.
        token: the internal token (None: a fresh random one).
        trusted_keys: PEM public keys the pods trust (the bundle's verified signer).
        allow_unsigned: the bundle is not signed by a trusted key; pods run with
            ``--allow-unsigned`` (only when the user asked for it).
    """

    image: str = "terrazzo-serve:0.1.0"
    namespace: str | None = None
    bundle_claim: str = "terrazzo-bundles"
    gateway_replicas: int = 1
    ray: bool = False
    token: str | None = None
    trusted_keys: tuple[str, ...] = ()
    allow_unsigned: bool = False


def dns_label(text: str, limit: int = 40) -> str:
    """A DNS-1123 label made from ``text`` (lower case, [a-z0-9-], starts/ends alphanumeric)."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return label or "model"


def accelerator(stage: Mapping[str, Any]) -> str | None:
    """The extended resource a stage's pod must request, from its build target (None: CPU)."""
    target = stage.get("target") or {}
    kind = str(target.get("kind", "llvm")) if isinstance(target, Mapping) else str(target)
    if str(stage.get("device", "")).lower().startswith("gaudi"):
        return _ACCELERATOR_BY_KIND["hpu"]
    return _ACCELERATOR_BY_KIND.get(kind)


def _meta(name: str, app: str, opts: K8sOptions, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": app,
            "app.kubernetes.io/part-of": "terrazzo",
            **labels,
        },
    }
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def _grpc_probe(port: int, initial_delay_s: int) -> dict[str, Any]:
    return {"grpc": {"port": port}, "initialDelaySeconds": initial_delay_s, "periodSeconds": 5}


def _pod_spec(
    container: dict[str, Any],
    opts: K8sOptions,
    device: str | None,
    accel: str | None,
    trust_map: str | None = None,
) -> dict[str, Any]:
    if trust_map is not None:
        container.setdefault("volumeMounts", []).append(
            {"name": "trust", "mountPath": TRUST_DIR, "readOnly": True}
        )
        container.setdefault("env", []).append({"name": "TERRAZZO_TRUST", "value": TRUST_DIR})
    if opts.allow_unsigned:
        container["args"].append("--allow-unsigned")
    container.setdefault("volumeMounts", []).extend(
        [
            {"name": "bundles", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # bundles are extracted here, per process
        ]
    )
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {
                "name": "bundles",
                "persistentVolumeClaim": {"claimName": opts.bundle_claim, "readOnly": True},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
        "terminationGracePeriodSeconds": 40,  # the gateway drains for up to 30 s
    }
    if trust_map is not None:
        spec["volumes"].append({"name": "trust", "configMap": {"name": trust_map}})
    if device is not None:
        spec["nodeSelector"] = {DEVICE_CLASS_LABEL: device}
    if accel is not None:
        spec["tolerations"] = [{"key": accel, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _resources(stage: Mapping[str, Any], accel: str | None) -> dict[str, Any]:
    # weights are held once on the device and once while loading; 512 MiB for the runtime
    mib = 512 + 2 * int(stage.get("weight_bytes", 0)) // (1 << 20)
    res: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": f"{mib}Mi"},
        "limits": {"memory": f"{2 * mib}Mi"},
    }
    if accel is not None:
        res["requests"][accel] = 1
        res["limits"][accel] = 1
    return res


def _token_env(secret_name: str) -> dict[str, Any]:
    return {
        "name": "TERRAZZO_INTERNAL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "token"}},
    }


def bundle_manifests(
    manifest: Mapping[str, Any], bundle_path: str, opts: K8sOptions
) -> list[dict[str, Any]]:
    """Every Kubernetes object that serves one bundle.

    Args:
        manifest: the bundle's manifest (``read_manifest``; no code is loaded).
        bundle_path: the bundle's path relative to the volume (``/models/<bundle_path>``).
        opts: image, namespace, volume, ...

    Returns:
        Objects in apply order (Secret, stage Services and StatefulSets or the RayCluster,
        gateway Deployment and Service).
    """
    model = str(manifest["model"]["name"])
    app = f"tz-{dns_label(model)}"
    in_pod = str(PurePosixPath(MODELS_DIR) / bundle_path)
    secret_name = f"{app}-internal"
    token_env = _token_env(secret_name)
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(secret_name, app, opts),
            "type": "Opaque",
            "stringData": {"token": opts.token or secrets.token_hex(24)},
        }
    ]
    trust_map = f"{app}-trust" if opts.trusted_keys else None
    if trust_map is not None:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(trust_map, app, opts),
                "data": {f"signer-{k}.pem": pem for k, pem in enumerate(opts.trusted_keys)},
            }
        )
    stages: Sequence[Mapping[str, Any]] = manifest["stages"]
    worker_args: list[str] = []
    if opts.ray:
        objs.append(_ray_cluster(stages, app, opts))
        worker_args = ["--ray", f"ray://{app}-head-svc:{RAY_CLIENT_PORT}"]
    else:
        for st in stages:
            i = int(st["index"])
            name = f"{app}-s{i}"
            replicas = max(1, int(st.get("replicas", 1) or 1))
            accel = accelerator(st)
            labels = {"app.kubernetes.io/component": "stage", "terrazzo.dev/stage": str(i)}
            selector = {"app.kubernetes.io/name": app, "terrazzo.dev/stage": str(i)}
            container = {
                "name": "worker",
                "image": opts.image,
                "args": [
                    "worker",
                    in_pod,
                    "--stage",
                    str(i),
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(WORKER_PORT),
                ],  # fmt: skip
                "env": [token_env],
                "ports": [{"name": "grpc", "containerPort": WORKER_PORT}],
                "resources": _resources(st, accel),
                "readinessProbe": _grpc_probe(WORKER_PORT, 5),
                "livenessProbe": _grpc_probe(WORKER_PORT, 60),
            }
            objs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": _meta(name, app, opts, **labels),
                    "spec": {
                        "clusterIP": "None",
                        "selector": selector,
                        "ports": [{"name": "grpc", "port": WORKER_PORT, "targetPort": "grpc"}],
                    },
                }
            )
            objs.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "metadata": _meta(name, app, opts, **labels),
                    "spec": {
                        "serviceName": name,
                        "replicas": replicas,
                        "podManagementPolicy": "Parallel",
                        "selector": {"matchLabels": selector},
                        "template": {
                            "metadata": {"labels": {**selector, **labels}},
                            "spec": _pod_spec(container, opts, str(st["device"]), accel, trust_map),
                        },
                    },
                }
            )
            for k in range(replicas):
                worker_args += ["--worker", f"{i}={name}-{k}.{name}:{WORKER_PORT}"]
    gw_labels = {"app.kubernetes.io/component": "gateway"}
    gw_selector = {"app.kubernetes.io/name": app, **gw_labels}
    gateway = {
        "name": "gateway",
        "image": opts.image,
        "args": [
            "serve",
            in_pod,
            "--host",
            "0.0.0.0",
            "--port",
            str(GATEWAY_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            *worker_args,
        ],  # fmt: skip
        "env": [token_env],
        "ports": [
            {"name": "grpc", "containerPort": GATEWAY_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "readinessProbe": _grpc_probe(GATEWAY_PORT, 5),
        "livenessProbe": _grpc_probe(GATEWAY_PORT, 60),
    }
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(f"{app}-gateway", app, opts, **gw_labels),
            "spec": {
                "replicas": opts.gateway_replicas,
                "selector": {"matchLabels": gw_selector},
                "template": {
                    "metadata": {"labels": gw_selector},
                    "spec": _pod_spec(gateway, opts, None, None, trust_map),
                },
            },
        }
    )
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(app, app, opts, **gw_labels),
            "spec": {
                "selector": gw_selector,
                "ports": [
                    {"name": "grpc", "port": GATEWAY_PORT, "targetPort": "grpc"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
                ],
            },
        }
    )
    return objs


def _ray_cluster(stages: Sequence[Mapping[str, Any]], app: str, opts: K8sOptions) -> dict[str, Any]:
    """A KubeRay RayCluster: a CPU-less head, one worker group per device class of the plan."""
    need: Counter[str] = Counter()
    accel_of: dict[str, str | None] = {}
    for st in stages:
        dev = str(st["device"])
        need[dev] += max(1, int(st.get("replicas", 1) or 1))
        accel_of[dev] = accel_of.get(dev) or accelerator(st)
    head = {
        "name": "ray-head",
        "image": opts.image,
        "ports": [
            {"name": "gcs", "containerPort": 6379},
            {"name": "client", "containerPort": RAY_CLIENT_PORT},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    }
    groups = []
    for dev, count in sorted(need.items()):
        accel = accel_of[dev]
        container = {
            "name": "ray-worker",
            "image": opts.image,
            "resources": _resources({"weight_bytes": 0}, accel),
        }
        groups.append(
            {
                "groupName": dns_label(dev, 30),
                "replicas": count,
                "minReplicas": count,
                "maxReplicas": count,
                # each node offers one devclass_<name> unit per stage replica it can hold
                "rayStartParams": {"resources": f'"{{\\"{devclass_resource(dev)}\\": 1}}"'},
                "template": {"spec": _pod_spec(container, opts, dev, accel)},
            }
        )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(app, app, opts),
        "spec": {
            "headGroupSpec": {
                # the head schedules no stage actors: they need a devclass_<name> resource
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": {"spec": _pod_spec(head, opts, None, None)},
            },
            "workerGroupSpecs": groups,
        },
    }
