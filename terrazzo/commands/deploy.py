"""`terrazzo deploy k8s`: Kubernetes manifests (or a KubeRay RayCluster) that serve bundles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("deploy", help="write deployment manifests for bundles")
    sub = p.add_subparsers(dest="deploy_command", metavar="TARGET")
    k = sub.add_parser(
        "k8s",
        help="Kubernetes manifests: gateway Deployment + Service, one StatefulSet per stage",
        description="Reads each bundle's manifest (no code is loaded) and writes, per model, the "
        "gateway Deployment and Service, one headless Service + StatefulSet per stage pinned to "
        "its device class (nodeSelector terrazzo.dev/device-class=<class>, the accelerator "
        "resource its build needs, tolerations), the internal-token Secret, and a "
        "kustomization.yaml. Bundles are read from a PersistentVolumeClaim mounted at /models "
        "holding SOURCE's files at the same relative paths. With --ray: a KubeRay RayCluster "
        "(one worker group per device class advertising devclass_<name>) instead of the "
        "StatefulSets.",
    )
    k.add_argument("source", help="a .tzb bundle, or a directory searched for *.tzb bundles")
    k.add_argument("-o", "--output", required=True, help="directory to write the manifests into")
    k.add_argument(
        "--image", default="terrazzo-serve:0.1.0", help="serving image (see the Dockerfile)"
    )
    k.add_argument("--namespace", default=None, help="namespace of every object")
    k.add_argument(
        "--bundle-claim",
        default="terrazzo-bundles",
        help="PersistentVolumeClaim holding the bundles (mounted read-only at /models)",
    )
    k.add_argument("--gateway-replicas", type=int, default=1, help="gateway pods (default 1)")
    k.add_argument(
        "--ray", action="store_true", help="write a KubeRay RayCluster instead of StatefulSets"
    )
    from terrazzo.commands._common import add_trust_arguments

    add_trust_arguments(
        k,
        "deploy a bundle that is unsigned or whose signature no trusted key verifies; its pods "
        "then serve it with --allow-unsigned (its code runs unverified)",
    )
    k.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _no_aliases() -> Any:
    import yaml

    class NoAliases(yaml.SafeDumper):
        """Plain YAML: repeated label dicts are written out, not as &anchors/*aliases."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    return NoAliases


def _bundles(source: Path) -> list[tuple[Path, str]]:
    from terrazzo.errors import ServingError

    if source.is_file():
        return [(source, source.name)]
    if source.is_dir():
        found = sorted(p for p in source.rglob("*.tzb") if p.is_file())
        if not found:
            raise ServingError(f"{source}: no *.tzb bundle in this directory")
        return [(p, p.relative_to(source).as_posix()) for p in found]
    raise ServingError(f"{source}: no such bundle or directory")


def public_pem(raw: bytes) -> str:
    """The PEM (SubjectPublicKeyInfo) text of a raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(raw)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def run(args: argparse.Namespace) -> int:
    import yaml

    from terrazzo.bundle import read_manifest
    from terrazzo.errors import ServingError
    from terrazzo.runtime.k8s import K8sOptions, bundle_manifests, dns_label

    if args.gateway_replicas < 1:
        raise ServingError(f"--gateway-replicas must be >= 1, got {args.gateway_replicas}")
    if args.namespace is not None and dns_label(args.namespace, 63) != args.namespace:
        raise ServingError(f"--namespace {args.namespace!r} is not a DNS-1123 label")
    opts = K8sOptions(
        image=args.image,
        namespace=args.namespace,
        bundle_claim=args.bundle_claim,
        gateway_replicas=args.gateway_replicas,
        ray=args.ray,
    )
    from dataclasses import replace

    from terrazzo.bundle import check_bundle
    from terrazzo.commands._common import warn_unverified

    _NoAliases = _no_aliases()  # noqa: N806
    files: dict[str, list[dict[str, Any]]] = {}
    for path, rel in _bundles(Path(args.source)):
        # every bundle checked first: signature (the pods trust the key that verified it here)
        checked = check_bundle(path, args.trust, allow_unsigned=args.allow_unsigned)
        warn_unverified("deploy", str(path), checked.signed, checked.signer is not None)
        signer = checked.signer
        own = replace(
            opts,
            trusted_keys=(public_pem(signer.raw),) if signer is not None else (),
            allow_unsigned=signer is None,
        )
        objs = bundle_manifests(read_manifest(path), rel, own)
        name = f"{objs[0]['metadata']['labels']['app.kubernetes.io/name']}.yaml"
        if name in files:
            raise ServingError(f"{path}: a second bundle of model {name[3:-5]!r}; rename one")
        files[name] = objs
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, objs in files.items():
        target = out / name
        tmp = out / f".{name}.tmp"
        # the file holds the internal-token Secret: owner-only from the first byte
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.dump_all(objs, f, Dumper=_NoAliases, sort_keys=False)
        os.replace(tmp, target)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    (out / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    kinds = sorted({o["kind"] for objs in files.values() for o in objs})
    print(
        f"wrote {len(files)} model(s) to {out}/ ({', '.join(kinds)}); "
        f"apply with: kubectl apply -k {out}"
    )
    return 0
