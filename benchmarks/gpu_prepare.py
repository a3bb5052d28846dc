"""Prepare the GPU check on the CPU machine: everything the accelerator machine runs, built here.

The accelerator machine has Python 3.12, torch, onnxruntime, numpy, grpcio and nvcc, but no TVM
compiler, no pydantic, no tritonclient and no package registry. So everything is compiled here
(nvcc works here) and carried in one folder (default ``.gpu/``, git-ignored, < 64 MiB):

- ``site/``: a runtime-only TVM (the ``tvm`` package without ``libtvm_compiler.so``: TVM then
  loads ``libtvm_runtime`` + ``libtvm_runtime_cuda`` only) and ``wheels/`` for Python 3.12
  (tvm-ffi, tritonclient, python-rapidjson, grpcio, protobuf);
- ``repo/``: a snapshot of the ``terrazzo`` package and ``benchmarks/gpu_*`` to run from;
- ``bundles/``: the five zoo models and three held-out transformers models compiled for an
  ``h200``-only fleet (CUDA sm_90), a mixed ``cpu`` + ``h200`` bundle, and an LLM agent whose
  prefill and decode are placed on different classes;
- ``refs/``: inputs and onnxruntime (CPU) outputs, the LLM's reference tokens;
- ``ops/``: single-op CUDA libraries from the calibration suite (for the ``h200`` profile);
- ``kernels/``: schedule-search candidates for three GPU kernels (see ``gpu_kernels.py``);
- ``predictions.json``: what the cost model predicts for every timed thing on ``h200``.

Run: ``python benchmarks/gpu_prepare.py [--out .gpu] [--skip-kernels]``; then on the device
machine ``bash .gpu/repo/benchmarks/gpu_check.sh RESULTS`` (see gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CUDA_H200 = {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}
H200_FLEET = {"devices": {"h200": {"count": 1}}, "pricing": {"mode": "cloud"}}
MIXED_FLEET = {"devices": {"cpu": {"count": 4}, "h200": {"count": 1}}, "pricing": {"mode": "cloud"}}
ZOO = ("mlp", "cnn", "bert", "gpt2", "llama")
# Wheels for the accelerator machine's Python 3.12 (what it lacks, at the project's pins).
WHEELS = (
    "apache-tvm-ffi==0.1.14.post1",
    "tritonclient==2.73.0",
    "python-rapidjson==1.23",
    "grpcio==1.85.1",
    "protobuf==6.33.6",
    # agent bundles validate plan.json's agent section with pydantic when they are opened
    "pydantic==2.14.3",
    "pydantic-core==2.50.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    # bundles are signed; verifying the signature (before any stage library loads) needs these
    "cryptography==50.0.2",
    "cffi==2.1.1",
    "pycparser==3.12",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the runtime-only install --------------------------------------------------------------------


# What a runtime-only TVM leaves out: the compiler library and the packages only it uses (the
# Relax compiler, schedules, TOPI, C++ sources and headers, the web runtime).
TVM_DROP = (
    "libtvm_compiler.so",
    "3rdparty",
    "relax",
    "s_tir",
    "topi",
    "src",
    "web",
    "__pycache__",
    "*.pyc",
)
# Wheels a check that serves nothing can do without.
SERVE_WHEELS = (
    "tritonclient",
    "python-rapidjson",
    "grpcio",
    "protobuf",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
)


def pack_site(out: Path, wheel_cache: Path, serve: bool = True) -> None:
    """A runtime-only TVM and the wheels the accelerator machine lacks (``serve``: with the
    serving and client wheels)."""
    import tvm

    src = Path(tvm.__file__).parent
    dst = out / "site" / "tvm"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(
        src,
        dst,
        ignore=shutil.ignore_patterns(*TVM_DROP),
    )
    wheel_cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp", "-d", str(wheel_cache),
    ]  # fmt: skip
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run([*cmd, *WHEELS], check=True)
    wheels = out / "site" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    wanted = [n.split("==")[0] for n in WHEELS if serve or n.split("==")[0] not in SERVE_WHEELS]
    for w in wheel_cache.glob("*.whl"):
        if any(w.name.lower().startswith(n.replace("-", "_")) for n in wanted):
            shutil.copy2(w, wheels / w.name)
    size = sum(f.stat().st_size for f in (out / "site").rglob("*") if f.is_file())
    log(
        f"site: runtime-only tvm + {len(list(wheels.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB"
    )


def snapshot_repo(out: Path) -> None:
    dst = out / "repo"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(
        ROOT / "terrazzo", dst / "terrazzo", ignore=shutil.ignore_patterns("__pycache__")
    )
    (dst / "benchmarks").mkdir(parents=True)
    for f in ROOT.glob("benchmarks/gpu_*"):
        shutil.copy2(f, dst / "benchmarks" / f.name)
    shutil.copy2(ROOT / "benchmarks" / "_common.py", dst / "benchmarks" / "_common.py")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    (dst / "COMMIT").write_text(head + "\n")


# --- bundles ---------------------------------------------------------------------------------------


def _ort(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, inputs)[0])


def _stage_predictions(bundle: Path) -> list[dict[str, Any]]:
    from terrazzo.bundle import open_bundle

    with open_bundle(bundle) as b:
        plan = b.plan_json or {}
        stages = {s["index"]: s for s in plan.get("stages", [])}
        return [
            {
                "index": st.index,
                "device": st.device,
                "target": dict(st.target),
                "ops": list(stages.get(st.index, {}).get("ops", [])),
                "predicted_s": stages.get(st.index, {}).get("latency_s"),
            }
            for st in b.stages
        ]


def build_models(out: Path, names: list[str]) -> dict[str, Any]:
    """Zoo + held-out models on an h200-only fleet; inputs and onnxruntime outputs saved."""
    import gpu_models

    from terrazzo import zoo
    from terrazzo.pipeline import compile_model

    preds: dict[str, Any] = {}
    onnx_dir = out / "onnx-cache"
    for name in names:
        t0 = time.perf_counter()
        if name in ZOO:
            path = zoo.export_onnx(name, onnx_dir)
            inputs = zoo.example_inputs_numpy(name)
            source = "zoo"
        else:
            path, inputs = gpu_models.export(name, onnx_dir)
            source = "transformers (held out)"
        ref = _ort(path, inputs)
        bundle = out / "bundles" / f"{name}.tzb"
        res = compile_model(str(path), H200_FLEET, "1s", out_path=bundle, include_reference=False)
        np.savez(out / "refs" / f"{name}.npz", **{f"in:{k}": v for k, v in inputs.items()}, ref=ref)
        preds[name] = {
            "source": source,
            "bundle": f"bundles/{name}.tzb",
            "refs": f"refs/{name}.npz",
            "predicted_latency_s": res.plan.latency_s,
            "stages": _stage_predictions(bundle),
        }
        log(f"  {name:16s} {len(preds[name]['stages'])} stage(s), predicted "
            f"{res.plan.latency_s * 1e3:.3f} ms on h200, built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return preds


def build_mixed(out: Path, name: str = "bert", gpu_fraction: float = 0.5) -> dict[str, Any]:
    """One model, its first ops on h200 and the rest on the cpu class: two stages, one boundary."""
    from terrazzo import zoo
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet
    from terrazzo.placement.api import to_problem
    from terrazzo.placement.plan import build_plan

    path = zoo.export_onnx(name, out / "onnx-cache")
    inputs = zoo.example_inputs_numpy(name)
    graph = from_onnx(path)
    fleet = Fleet.from_dict(MIXED_FLEET)
    problem = to_problem(graph, fleet, SLA(latency_s=1.0), rps=1.0)
    devs = list(problem.devices)
    cut = int(problem.n * gpu_fraction)
    assign = np.array(
        [devs.index("h200") if i < cut else devs.index("cpu") for i in range(problem.n)]
    )
    plan = build_plan(problem, assign, "manual (GPU check)", 0.0)
    bundle = out / "bundles" / f"{name}-mixed.tzb"
    res = compile_model(
        str(path), MIXED_FLEET, "1s", out_path=bundle, include_reference=False, plan=plan
    )
    np.savez(
        out / "refs" / f"{name}-mixed.npz",
        **{f"in:{k}": v for k, v in inputs.items()},
        ref=_ort(path, inputs),
    )
    stages = _stage_predictions(bundle)
    log(f"  {name}-mixed: stages {[(s['index'], s['device']) for s in stages]}, "
        f"{len(plan.transfers)} transfer(s)")  # fmt: skip
    return {
        "bundle": f"bundles/{name}-mixed.tzb",
        "refs": f"refs/{name}-mixed.npz",
        "predicted_latency_s": res.plan.latency_s,
        "stages": stages,
        "transfers": [t.to_json() for t in plan.transfers],
    }


def build_llm(out: Path, name: str = "llm-pd", ttft_s: float | None = None) -> dict[str, Any]:
    """The LLM agent (prefill and decode on different classes) and its reference tokens.

    With ``ttft_s`` the SLA bounds time to first token, which moves the prefill to the GPU.
    """
    from terrazzo.codegen.llm_phases import TinyLlamaConfig, greedy_generate, torch_reference
    from terrazzo.pipeline.agent import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    bundle = out / "bundles" / f"{name}.tzb"
    from terrazzo.placement import SLA

    sla = SLA(latency_s=5.0, ttft_s=ttft_s) if ttft_s else "2s"
    compile_agent(ROOT / "examples" / "agents" / "llm_pd.yaml", Fleet.from_dict(MIXED_FLEET), sla,
                  bundle)  # fmt: skip
    from terrazzo.bundle import open_bundle

    with open_bundle(bundle) as b:
        agent = (b.plan_json or {})["agent"]
        stages = [
            {"index": s.index, "device": s.device, "target": dict(s.target)} for s in b.stages
        ]
    node = next(n for n in agent["nodes"] if n["kind"] == "llm.call")
    cfg = TinyLlamaConfig(**node["config"])
    ref = torch_reference(cfg)
    local = LocalAgent(agent_serving_plan(bundle))
    rng = np.random.default_rng(7)
    prompts, expected, local_tokens = [], [], []
    for _ in range(3):
        p = rng.integers(0, cfg.vocab_size, (1, 16)).astype(np.int64)
        env = local({"prompt": p})
        prompt = env["gen.prompt"]
        prompts.append(p)
        local_tokens.append(env["gen"])
        expected.append(greedy_generate(ref, prompt, node["max_new_tokens"], cfg))
    np.savez(
        out / "refs" / f"{name}.npz",
        prompts=np.stack(prompts),
        expected=np.stack(expected),
        local=np.stack(local_tokens),
    )
    assert all(np.array_equal(a, b) for a, b in zip(expected, local_tokens, strict=True))
    log(f"  {name}: stages {[(s['index'], s['device']) for s in stages]}")
    return {"bundle": f"bundles/{name}.tzb", "refs": f"refs/{name}.npz", "stages": stages}


def build_bisect(out: Path) -> dict[str, Any]:
    """The LLM's decode step cut into one stage per op (stages alternate between two CUDA
    classes so none merge): each stage's CUDA build can be compared with its host build on the
    same inputs, which names the op whose GPU code goes wrong."""
    from terrazzo.codegen.llm_phases import TinyLlamaConfig, export_relax
    from terrazzo.frontend import to_graph, uniquify_names
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet
    from terrazzo.placement.api import to_problem
    from terrazzo.placement.plan import build_plan

    graph = to_graph(uniquify_names(export_relax(TinyLlamaConfig())["decode"]), "decode")
    fleet = Fleet.from_dict({"devices": {"h200": {"count": 1}, "h100": {"count": 1}}})
    problem = to_problem(graph, fleet, SLA(latency_s=1.0), rps=1.0)
    devs = list(problem.devices)
    assign = np.array([devs.index("h200" if i % 2 == 0 else "h100") for i in range(problem.n)])
    plan = build_plan(problem, assign, "bisect (GPU check)", 0.0)
    bundle = out / "bundles" / "decode-bisect.tzb"
    compile_model(graph, fleet, SLA(latency_s=1.0), out_path=bundle, include_reference=False,
                  plan=plan)  # fmt: skip
    kinds = {o.name: o.kind for o in graph.ops}
    stages = _stage_predictions(bundle)
    for st in stages:
        st["kinds"] = [kinds.get(o, "?") for o in st["ops"]]
    log(f"  decode-bisect: {len(graph.ops)} ops in {len(stages)} stages")
    return {"bundle": "bundles/decode-bisect.tzb", "stages": stages}


def build_kernel_bisect(out: Path) -> dict[str, Any]:
    """The LLM bundle's decode step, each fused kernel built for CUDA and for the CPU."""
    import gpu_bisect

    from terrazzo.bundle import open_bundle
    from terrazzo.codegen.llm_phases import TinyLlamaConfig, export_relax

    with open_bundle(out / "bundles" / "llm-pd.tzb") as b:
        node = next(n for n in (b.plan_json or {})["agent"]["nodes"] if n["kind"] == "llm.call")
    mod = export_relax(TinyLlamaConfig(**node["config"]))["decode"]
    return gpu_bisect.prepare(out, mod, "decode")


# --- calibration ops -----------------------------------------------------------------------------


def build_ops(out: Path, quick: bool) -> list[dict[str, Any]]:
    """Every op of the calibration suite built for CUDA sm_90 as codegen builds a GPU stage."""
    from terrazzo.codegen import compile_module, cuda_source, nvcc_fatbin
    from terrazzo.costmodel import CostModel, load_catalog
    from terrazzo.pipeline import calibrate as cal

    cm = CostModel(load_catalog())
    ops_dir = out / "ops"
    ops_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    cases = cal.suite(quick=quick)
    cases.append(cal.OpCase("launch", ((16,), (16,)), cal._ops().add))
    for case in cases:
        # analysed as the calibration suite has it (weights as constants: the efficiency keys
        # tell x·W from activation products), built with the weights as parameters: the GPU
        # reads them from device memory either way, and the library stays small
        op = cal._analyse(cal._build_module(case), case.name)
        try:
            ex = compile_module(cal._build_module(replace(case, n_const=0)), CUDA_H200)
        except Exception as e:  # reported, not fatal: the row says why
            rows.append({"name": case.name, "error": str(e).splitlines()[0][:200]})
            continue
        lib = ops_dir / f"{case.name}.so"
        ex.export_library(str(lib))
        src = cuda_source(ex)
        if src is not None:
            (ops_dir / f"{case.name}.cu").write_text(src)
            fatbin = nvcc_fatbin(src, "sm_90")
            if isinstance(fatbin, bytes):
                (ops_dir / f"{case.name}.fatbin").write_bytes(fatbin)
        rows.append(
            {
                "name": case.name,
                "lib": f"ops/{case.name}.so",
                "shapes": [list(s) for s in case.shapes],
                "kind": op.kind,
                "op_class": op.op_class,
                "flops": op.flops,
                "nbytes": op.bytes_read + op.bytes_written,
                "bytes_read": op.bytes_read,
                "param_bytes": op.param_bytes,
                "held_out": case.held_out,
                "predicted_s": cm.op_latency_s(op, "h200"),
            }
        )
    log(f"  {len(rows)} calibration ops built for cuda sm_90")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    ap.add_argument("--wheel-cache", default="/tmp/terrazzo-gpu-wheels")
    ap.add_argument("--models", default=",".join([*ZOO, "vit", "t5-encoder", "whisper-encoder"]))
    ap.add_argument("--quick", action="store_true", help="quick calibration suite")
    ap.add_argument("--no-serve", action="store_true", help="site without the serving wheels")
    ap.add_argument("--kernels-round2", metavar="GPU_RUN_JSON",
                    help="add the offline proposer's second round from a first run's times")  # fmt: skip
    ap.add_argument("--skip", default="", help="comma list of parts to skip: site, models, "
                    "mixed, llm, llm-nograph, llm-rev, kbisect, bisect, ops, kernels")  # fmt: skip
    args = ap.parse_args(argv)
    out = Path(args.out)
    skip = set(filter(None, args.skip.split(",")))
    for d in ("bundles", "refs", "trusted"):
        (out / d).mkdir(parents=True, exist_ok=True)
    # the bundles are signed with this machine's local key: gpu_run.py trusts its public half
    from terrazzo.bundle import ensure_local_key, local_key_paths

    ensure_local_key()
    shutil.copy(local_key_paths()[1], out / "trusted" / "builder.pub.pem")
    pred_path = out / "predictions.json"
    preds: dict[str, Any] = json.loads(pred_path.read_text()) if pred_path.exists() else {}
    t0 = time.perf_counter()

    def save() -> None:
        preds["prepared_unix_s"] = time.time()
        pred_path.write_text(json.dumps(preds, indent=1, default=str) + "\n")

    if "site" not in skip:
        pack_site(out, Path(args.wheel_cache), serve=not args.no_serve)
    snapshot_repo(out)
    import gpu_kernels

    def no_cuda_graph_llm() -> dict[str, Any]:
        os.environ["TERRAZZO_CUDA_GRAPH"] = "0"
        try:
            return build_llm(out, "llm-pd-nograph")
        finally:
            del os.environ["TERRAZZO_CUDA_GRAPH"]

    # (--skip name, predictions key, what it builds, how); in order: later parts read earlier ones
    parts: list[tuple[str, str, str, Callable[[], Any]]] = [
        ("models", "models", "models (h200 only)", lambda: build_models(out, args.models.split(","))),
        ("mixed", "mixed", "mixed bundle (cpu + h200)", lambda: build_mixed(out)),
        ("llm", "llm", "LLM agent (prefill and decode on different classes)", lambda: build_llm(out)),
        ("llm-nograph", "llm_nograph", "LLM agent built without CUDA graphs (diagnostic twin)",
         no_cuda_graph_llm),
        ("llm-rev", "llm_rev", "LLM agent under a TTFT bound (prefill on the GPU, decode on the CPU)",
         lambda: build_llm(out, "llm-pd-rev", ttft_s=0.1)),
        ("kbisect", "kbisect", "decode step, fused kernels for cuda and cpu",
         lambda: build_kernel_bisect(out)),
        ("bisect", "bisect", "decode step, one stage per op", lambda: build_bisect(out)),
        ("ops", "ops", "calibration ops", lambda: build_ops(out, args.quick)),
        ("kernels", "kernels", "schedule-search candidates", lambda: gpu_kernels.prepare(out)),
    ]  # fmt: skip
    for name, key, what, build in parts:
        if name in skip or (name == "llm-nograph" and "llm" in skip):
            continue
        log(f"{what}:")
        preds[key] = build()
        save()
    if args.kernels_round2:
        log("schedule search, round 2:")
        measured = json.loads(Path(args.kernels_round2).read_text()).get("kernels", {})
        gpu_kernels.prepare_round2(out, preds["kernels"], measured)
    save()
    shutil.rmtree(out / "onnx-cache", ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"prepared {out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
