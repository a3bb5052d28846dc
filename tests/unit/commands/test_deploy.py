"""`terrazzo deploy k8s` and the serving image: manifests checked against the Kubernetes schemas
(kubernetes-validate), placement mapped to nodeSelector/resources, the Dockerfile linted by
hadolint, and the image's pins equal to pyproject's."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from terrazzo.cli import main
from tests.unit.bundle.test_bundle import _onnx_model, forced_plan

kv = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A 3-stage bundle: cpu → t4 → gaudi2, in a model-repository layout."""
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    d = tmp_path_factory.mktemp("deploy")
    model = _onnx_model(d / "tiny.onnx")
    fleet = Fleet.from_dict(
        {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}, "gaudi2": {"count": 1}}}
    )
    sla = SLA(latency_s=0.05)
    plan = forced_plan(from_onnx(model), fleet, sla, ["cpu", "t4", "gaudi2"])
    res = compile_model(model, fleet, sla, out_path=d / "repo" / "tiny" / "1" / "model.tzb",
                        plan=plan)  # fmt: skip
    assert [s.device for s in plan.stages] == ["cpu", "t4", "gaudi2"]
    return Path(res.path)


def _deploy(tmp_path: Path, *args: str) -> tuple[int, list[dict]]:
    out = tmp_path / "k8s"
    rc = main(["deploy", "k8s", *args, "-o", str(out)])
    docs: list[dict] = []
    for f in sorted(out.glob("tz-*.yaml")) if out.exists() else []:
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return rc, docs


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_manifests_validate_and_follow_the_plan(bundle, tmp_path, capsys):
    rc, docs = _deploy(tmp_path, str(bundle), "--namespace", "serving")
    assert rc == 0, capsys.readouterr().err
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)  # raises on any schema violation
        assert d["metadata"]["namespace"] == "serving"
    sets = {s["metadata"]["name"]: s for s in _by_kind(docs, "StatefulSet")}
    assert sorted(sets) == ["tz-tiny-s0", "tz-tiny-s1", "tz-tiny-s2"]
    want = {"tz-tiny-s0": ("cpu", None), "tz-tiny-s1": ("t4", "nvidia.com/gpu"),
            "tz-tiny-s2": ("gaudi2", "habana.ai/gaudi")}  # fmt: skip
    for name, (device, accel) in want.items():
        pod = sets[name]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"terrazzo.dev/device-class": device}
        limits = pod["containers"][0]["resources"]["limits"]
        if accel is None:
            assert not any("/" in k for k in limits) and "tolerations" not in pod
        else:
            assert limits[accel] == 1 and pod["tolerations"][0]["key"] == accel
        args = pod["containers"][0]["args"]
        assert args[:2] == ["worker", "/models/model.tzb"]
        assert args[args.index("--stage") + 1] == name[-1]
        # each replica has a stable name: the headless Service of the same name
        assert sets[name]["spec"]["serviceName"] == name
    svc = {s["metadata"]["name"]: s for s in _by_kind(docs, "Service")}
    assert svc["tz-tiny-s1"]["spec"]["clusterIP"] == "None"
    (gw,) = _by_kind(docs, "Deployment")
    gargs = gw["spec"]["template"]["spec"]["containers"][0]["args"]
    workers = [gargs[i + 1] for i, a in enumerate(gargs) if a == "--worker"]
    replicas = {n: s["spec"]["replicas"] for n, s in sets.items()}
    expected = [f"{n[-1]}={n}-{k}.{n}:9000" for n in sorted(sets) for k in range(replicas[n])]
    assert workers == expected
    # the token reaches every pod from the Secret, never through argv
    (secret,) = _by_kind(docs, "Secret")
    token = secret["stringData"]["token"]
    assert len(token) >= 32 and all(token not in " ".join(map(str, a)) for a in (gargs,))
    f = tmp_path / "k8s" / "tz-tiny.yaml"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert "&id" not in f.read_text()  # plain YAML, no anchors
    kust = yaml.safe_load((tmp_path / "k8s" / "kustomization.yaml").read_text())
    assert kust["resources"] == ["tz-tiny.yaml"]
    # every pod trusts exactly the key that signed the bundle (checked here), nothing unsigned
    from terrazzo.bundle import check_bundle

    (trust,) = _by_kind(docs, "ConfigMap")
    (pem,) = trust["data"].values()
    key_file = tmp_path / "signer.pem"
    key_file.write_text(pem)
    assert check_bundle(bundle, [str(key_file)]).signer is not None
    for pod in [s["spec"]["template"]["spec"] for s in [*sets.values(), gw]]:
        (c,) = pod["containers"]
        assert {"name": "TERRAZZO_TRUST", "value": "/etc/terrazzo/trusted"} in c["env"]
        assert "--allow-unsigned" not in c["args"]
        assert {"name": "trust", "configMap": {"name": "tz-tiny-trust"}} in pod["volumes"]


def test_an_untrusted_bundle_needs_allow_unsigned(bundle, tmp_path, capsys):
    rc, docs = _deploy(tmp_path, str(bundle), "--trust", str(_other_key(tmp_path)))
    assert rc == 2 and not docs
    assert "signature" in capsys.readouterr().err
    rc, docs = _deploy(tmp_path, str(bundle), "--trust", str(_other_key(tmp_path)),
                       "--allow-unsigned")  # fmt: skip
    assert rc == 0 and not _by_kind(docs, "ConfigMap")
    for s in _by_kind(docs, "StatefulSet"):
        assert "--allow-unsigned" in s["spec"]["template"]["spec"]["containers"][0]["args"]


def _other_key(tmp_path: Path) -> Path:
    from terrazzo.bundle import generate_keypair

    priv, pub = tmp_path / "other.pem", tmp_path / "other.pub.pem"
    if not pub.exists():
        generate_keypair(priv, pub)
    return pub


def test_a_model_repository_directory_keeps_relative_paths(bundle, tmp_path):
    repo = bundle.parents[2]  # .../repo/tiny/1/model.tzb
    rc, docs = _deploy(tmp_path, str(repo))
    assert rc == 0
    (gw,) = _by_kind(docs, "Deployment")
    assert gw["spec"]["template"]["spec"]["containers"][0]["args"][1] == (
        "/models/tiny/1/model.tzb"
    )


def test_ray_cluster_has_one_group_per_device_class(bundle, tmp_path):
    rc, docs = _deploy(tmp_path, str(bundle), "--ray")
    assert rc == 0
    assert not _by_kind(docs, "StatefulSet")
    (rc_obj,) = _by_kind(docs, "RayCluster")
    groups = {g["groupName"]: g for g in rc_obj["spec"]["workerGroupSpecs"]}
    assert sorted(groups) == ["cpu", "gaudi2", "t4"]
    from terrazzo.bundle import read_manifest

    for st in read_manifest(bundle)["stages"]:  # one Ray node per stage replica of the class
        assert groups[st["device"]]["replicas"] == st["replicas"]
    for name, g in groups.items():
        assert f"devclass_{name}" in g["rayStartParams"]["resources"]
        # the pod templates inside the CRD are core PodTemplates: validate them as such
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                     "template": g["template"]}, K8S_VERSION, strict=True)  # fmt: skip
    (gw,) = _by_kind(docs, "Deployment")
    gargs = gw["spec"]["template"]["spec"]["containers"][0]["args"]
    assert gargs[gargs.index("--ray") + 1] == "ray://tz-tiny-head-svc:10001"


@pytest.mark.parametrize("case", ["missing", "empty-dir", "corrupt"])
def test_bad_sources_get_one_line_and_write_nothing(case, tmp_path, capsys):
    src = tmp_path / "src"
    if case == "empty-dir":
        src.mkdir()
    elif case == "corrupt":
        src.mkdir()
        (src / "m.tzb").write_bytes(b"not a tar" * 100)
    rc, docs = _deploy(tmp_path, str(src))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "k8s").exists()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    res = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_serving_image_pins_equal_pyproject():
    pins = {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name, _, version = dep.partition("==")
        pins[name.lower()] = version
    image = [
        ln.strip() for ln in (ROOT / "deploy/requirements-serve.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]  # fmt: skip
    assert image, "the serving requirements are empty"
    for req in image:
        name, _, version = req.partition("==")
        assert pins.get(name.lower()) == version, f"{req} differs from pyproject.toml"
    # never the compiler side
    assert not {re.split("[=<>]", r)[0] for r in image} & {"torch", "onnx", "transformers", "ray"}
