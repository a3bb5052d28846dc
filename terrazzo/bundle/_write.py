"""Bundle step 1: pack compiled stages, weights and the plan into one ``.tzb`` file.

A ``.tzb`` is an uncompressed POSIX tar of regular files only, written in sorted name order
with fixed metadata (reproducible). ``manifest.json`` lists every other member with its
sha256 and size; ``manifest.sig`` (optional) is an Ed25519 signature of ``manifest.json``.
Layout::

    manifest.json  manifest.sig  plan.mlir  plan.json
    stages/<i>/host.so          llvm build for the host CPU (always; runs anywhere here)
    stages/<i>/host_b<N>.so     the host build with the batch symbol fixed to N (a bucket:
                                ``compile(batch_buckets=...)``; the stage's ``buckets`` entry)
    stages/<i>/device.so        build for the planned device's target (when it differs)
    stages/<i>/kernels.cu       CUDA source (cuda targets)
    stages/<i>/kernels.fatbin   nvcc output (cuda targets, when nvcc could compile the arch)
    stages/<i>/ir.json          the stage's Relax module (TVM JSON): rebuilt for another target
                                when an adaptive re-plan needs one (``serve --adapt``)
    weights/stage<i>.safetensors  the weights stage <i> reads (never pickle)
    reference/host.so           whole model in one function, for ``terrazzo verify``; it also
                                returns every value the stages pass between them
                                (``reference.outputs``), so each stage is checked alone
    reference/io.safetensors    inputs (``input/<name>``) and the outputs (``output/<name>``)
                                an independent implementation (onnxruntime, torch) computed
                                from them at compile time (``reference.io``)
    tuning/records.jsonl        MetaSchedule tuning records applied at build time
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import BundleError
from terrazzo.ir import TensorSpec

FORMAT_NAME = "terrazzo-bundle"
FORMAT_VERSION = 2
#: Versions this terrazzo reads. 2: stage libraries may export ``main_transform_params``
#: (weights → prepared weights, run once at load) with ``main`` taking the prepared weights;
#: 1: ``main`` takes the raw weights.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


@dataclass(frozen=True, slots=True)
class StageContent:
    """What ``write_bundle`` needs to know about one built stage.

    Attributes:
        index: stage index.
        device: planned device class.
        target: dict form of the TVM target of the device artifact.
        fallback_reason: why ``target`` is not the class's own target (None if it is).
        inputs / outputs: activation signatures, in call order.
        weights: global weight name → array, passed after the inputs in this order.
        files: ``host.so`` (required), ``device.so``, ``kernels.cu``, ``kernels.fatbin`` → path.
        replicas: planned replica count.
        ops: the op (binding) names in the stage.
        notes: sentences about artifacts that could not be built.
        predicted_latency_s: the planner's latency for the stage.
        build_s: build wall time.
        buckets: ``{"symbol": "batch", "sizes": [1, 2, 4]}`` when ``files`` holds static host
            builds ``host_b<N>.so`` at those batch sizes (None: the symbolic build only).
    """

    index: int
    device: str
    target: Mapping[str, Any]
    fallback_reason: str | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: Mapping[str, np.ndarray] = field(repr=False)
    files: Mapping[str, Path]
    replicas: int = 1
    ops: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    predicted_latency_s: float | None = None
    build_s: float = 0.0
    buckets: Mapping[str, Any] | None = None


_STAGE_FILES = ("host.so", "device.so", "kernels.cu", "kernels.fatbin", "ir.json")


def _versions() -> dict[str, str]:
    import terrazzo

    out = {
        "terrazzo": terrazzo.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for mod in ("tvm", "torch", "onnx"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # optional at runtime; record its absence
            out[mod] = "absent"
    return out


def _safetensors_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return bytes(save({k: np.asarray(v, order="C") for k, v in weights.items()}))


def write_bundle(
    out_path: str | os.PathLike[str],
    *,
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    stages: Sequence[StageContent],
    plan_mlir: str,
    plan_json: Mapping[str, Any] | None = None,
    model_sha256: str = "",
    fleet: Mapping[str, Any] | None = None,
    sla: Mapping[str, Any] | None = None,
    plan_summary: Mapping[str, Any] | None = None,
    reference_library: Path | str | None = None,
    reference_weights: Sequence[str] = (),
    reference_outputs: Sequence[TensorSpec] = (),
    reference_io: Any = None,
    tuning_records: str = "",
    host_target: Mapping[str, Any] | None = None,
    sign_key: str | os.PathLike[str] | bool | None = None,
) -> Path:
    """Write a ``.tzb`` bundle (atomically: a temp file renamed into place).

    Args:
        out_path: where to write the bundle.
        name: model name.
        inputs / outputs: the model's signature (outputs as tensor leaves).
        stages: one StageContent per stage, in index order.
        plan_mlir: the placed graph as tz-dialect MLIR.
        plan_json: the Plan's JSON form (optional).
        model_sha256: hash of the model file or graph the bundle was built from.
        fleet / sla / plan_summary: recorded in the manifest for ``inspect`` and reports.
        reference_library: whole-model host library for ``verify`` (optional); a member name
            (``stages/0/host.so``) when the only stage is the whole model.
        reference_weights: weight names the reference takes after the inputs, in order.
        reference_outputs: what the reference library returns, in order, when that is more
            than ``outputs`` (the values passed between stages, for per-stage checks).
        reference_io: an object with ``source`` (text), ``inputs`` and ``outputs`` (name →
            array): the model run by an independent implementation, stored for ``verify``.
        tuning_records: MetaSchedule records (JSON lines) applied at build time.
        host_target: the llvm target of the host builds.
        sign_key: PEM Ed25519 private key; when given, ``manifest.sig`` is written. ``True``:
            the local key (``terrazzo.bundle.ensure_local_key``, created on first use);
            ``None``/``False``: unsigned (it will only load with ``allow_unsigned``).

    Returns:
        The path written.
    """
    if [s.index for s in stages] != list(range(len(stages))):
        raise BundleError(
            f"stages must be indexed 0..n-1 in order, found {[s.index for s in stages]}"
        )
    members: dict[str, bytes | Path] = {"plan.mlir": plan_mlir.encode()}
    if plan_json is not None:
        members["plan.json"] = json.dumps(plan_json, indent=1, sort_keys=True, default=str).encode()
    members["tuning/records.jsonl"] = tuning_records.encode()
    stage_entries = []
    for st in stages:
        if "host.so" not in st.files:
            raise BundleError(f"stage {st.index} has no host.so build")
        files: dict[str, str] = {}
        for fname in _STAGE_FILES:
            if fname in st.files:
                member = f"stages/{st.index}/{fname}"
                members[member] = Path(st.files[fname])
                files[fname.split(".")[0] if fname != "kernels.fatbin" else "fatbin"] = member
        sizes = [int(n) for n in (st.buckets or {}).get("sizes", ())]
        for n in sizes:
            if f"host_b{n}.so" not in st.files:
                raise BundleError(f"stage {st.index} lists bucket {n} but has no host_b{n}.so")
            member = f"stages/{st.index}/host_b{n}.so"
            members[member] = Path(st.files[f"host_b{n}.so"])
            files[f"host_b{n}"] = member
        wmember = f"weights/stage{st.index}.safetensors"
        members[wmember] = _safetensors_bytes(st.weights)
        files["weights"] = wmember
        stage_entries.append(
            {
                "index": st.index,
                "device": st.device,
                "target": dict(st.target),
                "fallback_reason": st.fallback_reason,
                "notes": list(st.notes),
                "replicas": st.replicas,
                "ops": list(st.ops),
                "inputs": [t.to_json() for t in st.inputs],
                "outputs": [t.to_json() for t in st.outputs],
                "weights": list(st.weights),
                "weight_bytes": int(sum(v.nbytes for v in st.weights.values())),
                "files": files,
                "predicted_latency_s": st.predicted_latency_s,
                "build_s": round(st.build_s, 3),
                **({"buckets": {"symbol": str(st.buckets["symbol"]), "sizes": sizes}}
                   if sizes and st.buckets else {}),
            }
        )  # fmt: skip
    reference = None
    if isinstance(reference_library, str):  # an existing member (a single-stage bundle)
        if reference_library not in members:
            raise BundleError(f"reference library {reference_library!r} is not a bundle member")
        reference = {
            "library": reference_library,
            "weights": list(reference_weights),
            "same_as_stage": 0,
        }
    elif reference_library is not None:
        members["reference/host.so"] = Path(reference_library)
        reference = {"library": "reference/host.so", "weights": list(reference_weights)}
    if reference is not None and reference_outputs:
        reference["outputs"] = [t.to_json() for t in reference_outputs]
    if reference_io is not None:
        members["reference/io.safetensors"] = _safetensors_bytes(
            {f"input/{k}": v for k, v in reference_io.inputs.items()}
            | {f"output/{k}": v for k, v in reference_io.outputs.items()}
        )
        reference = dict(reference or {})
        reference["io"] = {"member": "reference/io.safetensors", "source": reference_io.source}
    index = {}
    for mname, content in sorted(members.items()):
        data = content if isinstance(content, bytes) else content.read_bytes()
        members[mname] = data
        index[mname] = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    weight_names = {w for st in stages for w in st.weights}
    weight_bytes = 0
    for w in weight_names:
        arr = next(st.weights[w] for st in stages if w in st.weights)
        weight_bytes += int(arr.nbytes)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "model": {"name": name, "sha256": model_sha256},
        "fleet": dict(fleet) if fleet else {},
        "sla": dict(sla) if sla else {},
        "plan": dict(plan_summary) if plan_summary else {},
        "host_target": dict(host_target) if host_target else {},
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        "stages": stage_entries,
        "reference": reference,
        "weight_bytes": weight_bytes,
        "tuning": {"records": "tuning/records.jsonl", "count": len(tuning_records.splitlines())},
        "members": index,
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
    all_members: dict[str, bytes] = {MANIFEST: manifest_bytes}
    if sign_key is not None and sign_key is not False:
        from terrazzo.bundle._sign import sign_bytes

        if sign_key is True:
            from terrazzo.bundle._trust import ensure_local_key

            sign_key = ensure_local_key()
        all_members[SIGNATURE] = sign_bytes(manifest_bytes, sign_key)
    for mname in sorted(members):
        all_members[mname] = members[mname]  # type: ignore[assignment]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for mname, data in all_members.items():
            info = tarfile.TarInfo(mname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out
