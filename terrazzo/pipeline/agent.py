"""The agent pipeline: an agent spec → placement (``place_agent``) → TVM builds per model/LLM phase → a ``.tzb`` bundle.

The only place that orders the stages for an agent graph (load the spec, decompose and place
it, build every model node and LLM phase with codegen, write the bundle). The bundle is a
normal ``.tzb`` (``write_bundle``): its compiled stages are the agent's model nodes (one
whole-model Relax library per node) and, for each ``llm`` node, a prefill and a decode library
(``terrazzo.codegen.llm_phases``; weights are constants inside the library). Tools, retrieval
and memory have no code to build: ``plan.json["agent"]`` lists every node with its device
class, its runner kind and its settings, and ``terrazzo.runtime.agent_plan`` turns that into
the served stage DAG (conditional loops unrolled to ``max_iterations``).

Placement: the LLM of a test-size spec (``tiny-llama``) is costed as a deployment-size model
(``cost_preset``, default ``llama3-8b``) so the plan is the one the paper's question asks about;
with ``pd_split`` the prefill and decode phases are kept on different device classes (the P::D
split) by searching, for each prefill class, the cheapest plan whose decode is elsewhere, when
the optimum co-locates them (the notes say what the split costs).

Builds go through the normal codegen path (``build_stage``): every stage gets a host-CPU library;
a stage planned on a GPU class also gets that class's own build (CUDA source, nvcc fatbin) with
``device_builds``. Where the planned device is absent at serve time the host build runs and the
serving plan says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from terrazzo.errors import CodegenError, PlacementError
from terrazzo.frontend.agent_schema import AgentPlanSection, LoopEntry, WorkerRow
from terrazzo.frontend.kinds import find_kind, node_kind, register_hooks
from terrazzo.pipeline.load import FleetLike, SLALike, as_fleet, as_sla
from terrazzo.placement import SLA, Fleet, Plan

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog
    from terrazzo.ir import Graph
    from terrazzo.pipeline.model import ProgressFn

TEST_SIZE_PRESETS = ("tiny-llama",)


@dataclass(frozen=True, slots=True)
class AgentCompileResult:
    """What ``compile_agent`` produced: the bundle, the plan and the per-node placement."""

    path: Path
    plan: Plan
    devices: dict[str, str]
    notes: tuple[str, ...]
    build_s: float


def _has_llm_phases(op: Any) -> bool:
    """An op of a kind placed as prefill and decode tasks (an LLM call)."""
    kind = find_kind(op.kind)
    return kind is not None and kind.phases == ("prefill", "decode") and op.kind == kind.op_kind


def _costed_graph(graph: Graph, cost_preset: str | None) -> tuple[Graph, list[str]]:
    """The graph the planner sees: test-size LLMs replaced by ``cost_preset``'s architecture."""
    from terrazzo.frontend.agent_spec import LLM_PRESETS
    from terrazzo.ir import make_attrs

    notes: list[str] = []
    if not cost_preset:
        return graph, notes
    ops = []
    for op in graph.ops:
        if _has_llm_phases(op) and (
            cost_preset != "auto" or op.attr("preset") in TEST_SIZE_PRESETS
        ):
            preset = "llama3-8b" if cost_preset == "auto" else cost_preset
            if preset not in LLM_PRESETS:
                raise CodegenError(f"cost_preset {preset!r} is not one of {sorted(LLM_PRESETS)}")
            c = LLM_PRESETS[preset]
            d = op.attr_dict
            d.update(
                preset=preset,
                layers=c["num_hidden_layers"],
                d_model=c["hidden_size"],
                heads=c["num_attention_heads"],
                kv_heads=c["num_key_value_heads"],
                ffn_dim=c["intermediate_size"],
                vocab=c["vocab_size"],
            )
            notes.append(
                f"LLM node {op.name!r} ({op.attr('preset')}) is costed as {preset} for placement; "
                "the bundle runs the spec's own model"
            )
            op = replace(op, attrs=make_attrs(d))
        ops.append(op)
    return replace(graph, ops=tuple(ops)), notes


def place_agent(
    graph: Graph,
    fleet: Fleet,
    sla: SLA,
    rps: float = 1.0,
    solver: str = "milp",
    *,
    cost_preset: str | None = "auto",
    pd_split: bool = True,
    catalog: Catalog | None = None,
) -> tuple[Plan, list[str]]:
    """Place an agent graph with ``terrazzo.report.plan_agent``; keep prefill and decode apart with ``pd_split``.

    Returns:
        (Plan, notes) — notes say what was costed as what and whether the split was forced.

    Raises:
        PlacementError: the SLA cannot be met.
    """
    from terrazzo.placement import solve
    from terrazzo.report import agent_problem

    costed, notes = _costed_graph(graph, cost_preset)
    problem = agent_problem(costed, fleet, sla, rps, catalog=catalog)
    plan = solve(problem, solver)
    if not pd_split:
        return plan, notes
    tasks = list(problem.tasks)
    devices = list(problem.devices)
    # Splits already chosen stay pinned while a later LLM node's split is searched: each search
    # re-solves the whole problem, and from the unpinned problem it would undo the earlier split
    # (the table then showed ``t4::t4`` while the note said ``cpu::t4``).
    pinned = np.array(problem.latency_s, dtype=float, copy=True)
    for op in graph.ops:
        if not _has_llm_phases(op):
            continue
        pre, dec = f"{op.name}.prefill", f"{op.name}.decode"
        pi, di = tasks.index(pre), tasks.index(dec)
        if plan.assignment[pre] != plan.assignment[dec]:
            pinned[pi, [j for j, d in enumerate(devices) if d != plan.assignment[pre]]] = math.inf
            pinned[di, [j for j, d in enumerate(devices) if d != plan.assignment[dec]]] = math.inf
            continue
        best, best_lat = None, pinned
        for c in range(len(devices)):  # prefill pinned to c, decode barred from c
            if not math.isfinite(pinned[pi, c]):
                continue
            lat = pinned.copy()
            lat[pi, [j for j in range(len(devices)) if j != c]] = math.inf
            lat[di, c] = math.inf
            try:
                cand = solve(replace(problem, latency_s=lat, _cache={}), solver)
            except PlacementError:
                continue
            if best is None or cand.usd_per_hour < best.usd_per_hour:
                best, best_lat = cand, lat
        if best is None:
            notes.append(
                f"{op.name}: prefill and decode share {plan.assignment[pre]}; no P::D split "
                "meets the SLA"
            )
            continue
        notes.append(
            f"{op.name}: P::D split forced (cheapest plan with prefill and decode on different classes): "
            f"{best.assignment[pre]}::{best.assignment[dec]} at {best.usd_per_hour:.3f} USD/h vs "
            f"{plan.usd_per_hour:.3f} USD/h co-located on {plan.assignment[pre]}"
        )
        plan = best
        pinned = best_lat
        d = devices.index(plan.assignment[dec])
        pinned[di, [j for j in range(len(devices)) if j != d]] = math.inf
    return plan, notes


def llm_config_of(op: Any) -> Any:
    """The ``TinyLlamaConfig`` that runs an ``llm.call`` op: its spec architecture with random
    weights, or a Hugging Face ``checkpoint`` directory's architecture and weights."""
    from terrazzo.codegen.llm_phases import TinyLlamaConfig
    from terrazzo.costmodel import llm

    a: dict[str, Any] = op.attr_dict
    prompt_len = int(a.get("prompt_tokens", 32))
    if a.get("checkpoint"):  # a Hugging Face directory: its architecture and weights
        from terrazzo.frontend.hf import read_hf_dir

        max_len = prompt_len + int(a["max_new_tokens"])
        ck = read_hf_dir(str(a["checkpoint"]), max_len=max_len)
        return TinyLlamaConfig(**ck.build_settings, max_len=max_len, prompt_len=prompt_len,
                               checkpoint=str(ck.path))  # fmt: skip
    arch = llm.LLMConfig.llama(
        op.name,
        *(int(a[k]) for k in ("layers", "d_model", "heads", "kv_heads", "ffn_dim", "vocab")),
    )
    return TinyLlamaConfig.from_arch(arch, prompt_len, prompt_len + int(a["max_new_tokens"]))


def _check_runnable(op: Any) -> None:
    a: dict[str, Any] = op.attr_dict
    params = int(a["layers"]) * (
        4 * int(a["d_model"]) ** 2 + 3 * int(a["d_model"]) * int(a["ffn_dim"])
    )
    if params > 50_000_000:
        raise CodegenError(
            f"LLM node {op.name!r} ({a.get('preset')}) has ~{params / 1e9:.1f}B parameters: the agent "
            "compiler builds random-weight models for running on this host; use a small preset "
            "(tiny-llama) and cost_preset for planning at deployment size"
        )


def _export_torch_model(
    op: Any, batch: int = 0, module: Any = None
) -> tuple[Any, list[Any], list[Any]]:
    """torch.export a model node with its example inputs and import it into Relax (weights as constants).

    ``batch > 0``: the same model with dimension 0 of every example input set to ``batch``
    (a copy the runtime runs for ``batch`` requests merged across conversations); pass the
    ``module`` the batch-1 build exported so that the copies hold the same weights.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from terrazzo.bundle import TensorSpec
    from terrazzo.frontend.agent import resolve_callable

    if module is None:
        module = resolve_callable(str(op.attr("source")))().eval()
    ex = op.attr("example_inputs") or ()
    if batch:
        ex = tuple((name, (batch, *tuple(shape)[1:]), dtype) for name, shape, dtype in ex)
    args = tuple(torch.zeros(tuple(shape), dtype=getattr(torch, dtype)) for _, shape, dtype in ex)
    with torch.no_grad():
        ep = torch.export.export(module, args)
        y = module(*args)
    mod = from_exported_program(ep, keep_params_as_input=False)
    ins = [TensorSpec(name, dtype, tuple(shape)) for name, shape, dtype in ex]
    outs = [TensorSpec(op.name, str(y.dtype).removeprefix("torch."), tuple(y.shape))]
    return mod, ins, outs


def _export_onnx_model(op: Any) -> tuple[Any, list[Any], list[Any]]:
    """Import an ONNX model node through the ONNX frontend (checks, fix-ups, static shapes)."""
    from terrazzo.bundle import TensorSpec
    from terrazzo.frontend import from_onnx

    graph = from_onnx(str(op.attr("source")))
    if len(graph.outputs) != 1:
        raise CodegenError(
            f"model node {op.name!r}: agent model nodes have one output; "
            f"{op.attr('source')} has {len(graph.outputs)}"
        )
    ins = [TensorSpec(v, graph.values[v].dtype, tuple(graph.values[v].shape)) for v in graph.inputs]
    out_t = graph.values[graph.outputs[0]]
    outs = [TensorSpec(op.name, out_t.dtype, tuple(out_t.shape))]
    return graph.relax_mod, ins, outs


def _export_llm(
    op: Any, decode_batches: tuple[int, ...] = (), kv: Any = None
) -> dict[str, tuple[Any, list[Any], list[Any]]]:
    """The prefill and decode Relax modules of an ``llm.call`` op with their signatures, and
    with ``decode_batches`` the batched paged decode phase at each size (``decode_b{B}``)."""
    from terrazzo.bundle import TensorSpec
    from terrazzo.codegen.llm_phases import (
        DECODE_BATCH_OUTPUTS,
        PHASE_OUTPUTS,
        decode_batch_inputs,
        example_inputs,
        export_relax,
    )

    cfg = llm_config_of(op)
    ex = example_inputs(cfg)
    row = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
    for b in decode_batches:
        ex[f"decode_b{b}"] = decode_batch_inputs(cfg, kv, b)
    out = {}
    for phase, mod in export_relax(cfg, decode_batches, kv).items():
        ins = [TensorSpec(n, str(a.dtype), tuple(a.shape)) for n, a in ex[phase].items()]
        if phase.startswith("decode_b"):
            b = int(phase[len("decode_b") :])
            bs = {"logits": (b, cfg.vocab_size), "k_new": (b, *row), "v_new": (b, *row)}
            outs = [TensorSpec(n, "float32", bs[n]) for n in DECODE_BATCH_OUTPUTS]
        else:
            vocab, cache = (1, cfg.vocab_size), tuple(cfg.cache_shape)
            shapes = {"logits": vocab, "k_cache": cache, "v_cache": cache}
            outs = [TensorSpec(n, "float32", shapes[n]) for n in PHASE_OUTPUTS[phase]]
        out[phase] = (mod, ins, outs)
    return out


def _target_choice(device: str, catalog: Any, device_builds: bool) -> Any:
    """How a stage planned on ``device`` is built: the class's own target (GPUs) or the host CPU."""
    from terrazzo.codegen import TargetChoice, choose_target, host_target

    spec = catalog.get(device) if hasattr(catalog, "get") else None
    host = host_target()
    if spec is None or spec.kind == "cpu":
        return TargetChoice(device, host, None)  # CPU classes run the host build
    if not device_builds:
        own = dict(spec.tvm_target) if spec.tvm_target else {"kind": "none"}
        arch = f"/{own['arch']}" if "arch" in own else ""
        return TargetChoice(
            device,
            host,
            f"planned on {device} ({own.get('kind')}{arch}); built for the host CPU only "
            "(device_builds=False), which runs here",
        )
    return choose_target(device, spec.tvm_target, spec.fallback_target)


def build_task_stage(
    index: int,
    task: str,
    exported: tuple[Any, list[Any], list[Any]],
    plan: Plan,
    catalog: Catalog,
    device_builds: bool,
    tmpdir: Path,
    say: Callable[[str, dict[str, Any]], Any],
) -> Any:
    """Build one placed task (a Relax module with its input/output specs) into a bundle stage.

    The task's device comes from ``plan.assignment``, its replicas and predicted latency from the
    plan stage holding it; the stage is built for that device's target (or the host CPU).
    """
    from terrazzo.bundle import StageContent
    from terrazzo.codegen import StageModule, build_stage

    mod, ins, outs = exported
    device = plan.assignment[task]
    choice = _target_choice(device, catalog, device_builds)
    say("build", {"task": task, "device": device, "target": dict(choice.target)})
    sm = StageModule(index, mod, (task,), tuple(t.name for t in ins),
                     tuple(t.name for t in outs), (), (), ())  # fmt: skip
    built = build_stage(sm, choice, tmpdir)
    pstage = next(s for s in plan.stages if task in s.ops)
    return StageContent(
        index=index,
        device=device,
        target=dict(choice.target),
        fallback_reason=choice.fallback_reason,
        inputs=tuple(ins),
        outputs=tuple(outs),
        weights={},
        files=dict(built.files),
        replicas=int(pstage.replicas),
        ops=(task,),
        notes=built.notes,
        predicted_latency_s=float(pstage.latency_s),
        build_s=built.build_s,
    )


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a kind's ``build`` hook may use: the graph, the placement and a stage builder.

    ``add_stage(task, (relax module, input TensorSpecs, output TensorSpecs))`` builds one
    compiled stage for placement task ``task`` and returns its bundle stage index.
    """

    graph: Any
    assignment: dict[str, str]
    add_stage: Callable[[str, tuple[Any, list[Any], list[Any]]], int]
    search_below: int
    batch_sizes: tuple[int, ...] = ()


def _build_input(op: Any, cx: BuildContext) -> dict[str, Any]:
    vt = cx.graph.values[op.inputs[0]]
    return {"device": cx.assignment[op.name], "shape": list(vt.shape), "dtype": vt.dtype}


def _build_model(op: Any, cx: BuildContext) -> dict[str, Any]:
    fmt = op.attr("format")
    if fmt not in ("torch", "onnx"):
        raise CodegenError(
            f"model node {op.name!r}: the agent compiler builds torch and ONNX model nodes, not {fmt!r}"
        )
    module = None
    if fmt == "torch":
        from terrazzo.frontend.agent import resolve_callable

        module = resolve_callable(str(op.attr("source")))().eval()
    exported = _export_onnx_model(op) if fmt == "onnx" else _export_torch_model(op, 0, module)
    entry: dict[str, Any] = {"device": cx.assignment[op.name],
                             "stage": cx.add_stage(op.name, exported)}  # fmt: skip
    sizes = [b for b in cx.batch_sizes if b > 1]
    if module is not None and sizes and _batches_on_dim0(exported):
        batched: dict[str, int] = {}
        for b in sizes:
            try:
                copy = _export_torch_model(op, b, module)
            except Exception:  # the module fixes its batch (a reshape to 1, ...): not batched
                break
            if not all(t.shape[0] == b for t in (*copy[1], *copy[2])):
                break
            batched[str(b)] = cx.add_stage(op.name, copy)
        if batched:
            entry["batch_stages"] = batched
    return entry


def _batches_on_dim0(exported: tuple[Any, list[Any], list[Any]]) -> bool:
    """Every input and output of a model node has dimension 0 of size 1 (a batch of one)."""
    _, ins, outs = exported
    return all(len(t.shape) >= 1 and t.shape[0] == 1 for t in (*ins, *outs))


def _build_llm(op: Any, cx: BuildContext) -> dict[str, Any]:
    from terrazzo.codegen.llm_phases import KVLayout

    _check_runnable(op)
    cfg = llm_config_of(op)
    # continuous batching (runtime.llm_batch) for LLMs outside loops: a paged KV pool holding a
    # full context for every sequence of the largest batch, plus the scratch block
    batches = cx.batch_sizes if not op.attr_dict.get("loop") else ()
    block = min(16, cfg.max_len)
    kv = KVLayout(block=block, n_blocks=1 + -(-cfg.max_len // block) * max(batches or (1,)))
    phases = _export_llm(op, batches, kv if batches else None)
    pre, dec = f"{op.name}.prefill", f"{op.name}.decode"
    entry = {
        "prefill": {"device": cx.assignment[pre], "stage": cx.add_stage(pre, phases["prefill"])},
        "decode": {"device": cx.assignment[dec], "stage": cx.add_stage(dec, phases["decode"])},
        "config": {k: getattr(cfg, k) for k in cfg.__slots__},
        "max_new_tokens": int(op.attr("max_new_tokens")),
        "search_below": cx.search_below,
        "kv_cache_bytes": int(cfg.kv_cache_bytes()),
    }
    if batches:
        entry["decode_batch"] = {str(b): cx.add_stage(dec, phases[f"decode_b{b}"]) for b in batches}
        entry["kv"] = {"block": kv.block, "n_blocks": kv.n_blocks, "dtype": kv.dtype}
    return entry


def _build_tool(op: Any, cx: BuildContext) -> dict[str, Any]:
    dtype = cx.graph.values[op.name].dtype
    return {"device": cx.assignment[op.name], "function": str(op.attr("function")), "dtype": dtype}


def _build_retrieve(op: Any, cx: BuildContext) -> dict[str, Any]:
    if op.attr("documents"):  # text: embed the passages with the embedder, build a faiss index
        from terrazzo.pipeline.retrieval import build_index, load_documents

        where = f"retrieve node {op.name!r}"
        passages = load_documents(str(op.attr("documents")), where)
        embedder = cx.graph.producers().get(op.inputs[0])
        if embedder is None:
            raise CodegenError(f"{where}: its input must come from an embedder model node")
        index_b64, _ = build_index(passages, cx.graph.op(embedder))
        return {"device": cx.assignment[op.name], "top_k": int(op.attr("top_k")),
                "passages": passages, "index_b64": index_b64}  # fmt: skip
    return {"device": cx.assignment[op.name], "embeddings": str(op.attr("embeddings")),
            "top_k": int(op.attr("top_k"))}  # fmt: skip


def _build_memory(op: Any, cx: BuildContext) -> dict[str, Any]:
    dtype = cx.graph.values[op.name].dtype
    return {"device": cx.assignment[op.name], "key": str(op.attr("key")), "dtype": dtype}


def _build_branch(op: Any, cx: BuildContext) -> dict[str, Any]:
    arms = {a: json.loads(c) for a, c in cast("tuple[tuple[str, str], ...]", op.attr("arms"))}
    return {"device": cx.assignment[op.name], "arms": arms, "default": str(op.attr("default"))}


def _build_join(op: Any, cx: BuildContext) -> dict[str, Any]:
    ports = cast("tuple[Any, ...]", op.attr_dict.get("input_ports", ()) or ())
    return {"device": cx.assignment[op.name], "mode": str(op.attr("mode")),
            "input_ports": [list(p) for p in ports]}  # fmt: skip


def _build_map(op: Any, cx: BuildContext) -> dict[str, Any]:
    return {"device": cx.assignment[op.name], "function": str(op.attr("function")),
            "max_parallel": int(op.attr("max_parallel")),
            "dtype": cx.graph.values[op.name].dtype}  # fmt: skip


def _build_http(op: Any, cx: BuildContext) -> dict[str, Any]:
    from terrazzo.frontend.agent_tools import http_entry_fields

    return {"device": cx.assignment[op.name], **http_entry_fields(op.attr_dict)}


def _build_mcp(op: Any, cx: BuildContext) -> dict[str, Any]:
    a = op.attr_dict
    return {"device": cx.assignment[op.name],
            **{k: a[k] for k in ("url", "tool", "argument", "timeout_s", "retries")}}  # fmt: skip


register_hooks("http", build=_build_http)
register_hooks("mcp", build=_build_mcp)
register_hooks("branch", build=_build_branch)
register_hooks("join", build=_build_join)
register_hooks("map", build=_build_map)

# Build hooks of the built-in kinds (tools, retrieval and memory have no code to build).
register_hooks("input", build=_build_input)
register_hooks("model", build=_build_model)
register_hooks("llm", build=_build_llm)
register_hooks("tool", build=_build_tool)
register_hooks("retrieve", build=_build_retrieve)
register_hooks("memory.load", build=_build_memory)
register_hooks("memory.store", build=_build_memory)


def compile_agent(
    spec_path: str | Path,
    fleet: FleetLike,
    sla: SLALike,
    out_path: str | Path,
    *,
    rps: float = 1.0,
    solver: str = "milp",
    cost_preset: str | None = "auto",
    pd_split: bool = True,
    search_below: int = 128,
    device_builds: bool = True,
    profile: str | None = None,
    sign_key: str | Path | bool | None = True,
    progress: ProgressFn | None = None,
    batch_sizes: tuple[int, ...] = (),
) -> AgentCompileResult:
    """Compile an agent spec (YAML) into a servable ``.tzb`` bundle.

    Args:
        spec_path: the agent YAML (``examples/agents/voice_agent.yaml``).
        fleet: a ``Fleet`` or the path of a fleet YAML.
        sla: an ``SLA``, seconds, or text such as ``"2s"``.
        out_path: bundle path.
        rps: traffic target.
        solver: placement solver.
        cost_preset: LLM preset to cost test-size LLMs as (``"auto"``: ``llama3-8b`` for
            ``tiny-llama``; None: cost the spec's own model).
        pd_split: keep each LLM's prefill and decode on different device classes.
        device_builds: also build stages planned on GPU classes for that class's own target
            (CUDA source + nvcc fatbin where nvcc exists); the host-CPU build is always made.
        search_below: loop condition — the LLM's answer asks for another search when its first
            (byte) token is below this value.
        profile: cost-model catalog profile (default: the fleet's, else ``datasheet``).
        sign_key: Ed25519 private key (PEM) to sign the bundle; ``True`` (default): the local
            key (created on first use, trusted on this machine); ``None``: unsigned.
        progress: optional ``callable(event: str, detail: dict)``.
        batch_sizes: batch sizes to serve concurrent conversations at (e.g. ``(1, 2, 4, 8)``):
            each LLM outside a loop also gets its batched paged decode phase at every size
            (its decode then runs in one continuous-batching engine shared by every
            conversation, ``runtime.llm_batch``) and each torch model node whose dimension 0
            is a batch of one gets a copy at every size above 1 (requests of concurrent
            conversations merge, ``runtime.batcher``). Empty: batch-1 builds only.

    Returns:
        AgentCompileResult.

    Raises:
        FrontendError: the spec is malformed.  PlacementError: the SLA cannot be met.
        CodegenError: a node cannot be built.
    """
    from terrazzo.bundle import TensorSpec, write_bundle
    from terrazzo.codegen import host_target
    from terrazzo.costmodel import load_catalog
    from terrazzo.frontend import load_agent

    t0 = time.perf_counter()
    say = progress or (lambda *_: None)
    spec_path = Path(spec_path)
    graph = load_agent(spec_path)
    fleet, sla = as_fleet(fleet), as_sla(sla)
    catalog = load_catalog(profile or fleet.profile or "datasheet")
    plan, notes = place_agent(
        graph, fleet, sla, rps, solver, cost_preset=cost_preset, pd_split=pd_split, catalog=catalog
    )
    say("placed", {"assignment": dict(plan.assignment), "latency_s": plan.latency_s})
    host = dict(host_target())
    stages: list[Any] = []
    gattrs: dict[str, Any] = dict(graph.attrs)
    loops = {
        name: LoopEntry.model_validate({"from": src, "to": dst, "max_iterations": int(mx),
                                        "expected_iterations": float(ex), "condition": cond})
        for name, src, dst, mx, ex, cond in gattrs.get("loops", ()) or ()
    }  # fmt: skip
    for name, cond_json in gattrs.get("loop_while", ()) or ():
        loops[name].while_ = json.loads(cond_json)
    with tempfile.TemporaryDirectory(prefix="tz-agent-") as tmp:
        tmpdir = Path(tmp)

        def add_stage(task: str, exported: tuple[Any, list[Any], list[Any]]) -> int:
            index = len(stages)
            stages.append(
                build_task_stage(index, task, exported, plan, catalog, device_builds, tmpdir, say)
            )
            return index

        sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if any(b < 1 or b > 256 for b in sizes):
            raise CodegenError(f"batch_sizes {list(batch_sizes)}: each must be in 1..256")
        cx = BuildContext(graph, dict(plan.assignment), add_stage, int(search_below), sizes)
        nodes = []
        for op in graph.ops:
            kind = node_kind(op.kind)
            if kind.build is None:
                raise CodegenError(f"agent node {op.name!r}: no codegen for kind {op.kind!r}")
            fields = kind.build(op, cx)
            base = {"name": op.name, "kind": op.kind, "inputs": list(op.inputs),
                    "loop": op.attr_dict.get("loop"),
                    "gates": [list(g) for g in cast("tuple[Any, ...]",
                                                     op.attr_dict.get("gates", ()) or ())]}  # fmt: skip
            nodes.append(kind.entry.model_validate({**base, **fields}))

        input_specs = [  # input nodes read the graph's arguments
            TensorSpec(op.name, graph.values[op.inputs[0]].dtype,
                       tuple(graph.values[op.inputs[0]].shape))
            for op in graph.ops
            if op.inputs and op.inputs[0] in graph.inputs
        ]  # fmt: skip
        output_names = list(gattrs.get("output_names", ()) or ())
        outputs_map = dict(zip(output_names, graph.outputs, strict=True))
        out_specs = []
        for oname, src in outputs_map.items():
            src_stage = next((st for st in stages if st.ops == (src,)), None)
            if src_stage is not None:  # a model node: its compiled output
                o = src_stage.outputs[0]
                out_specs.append(TensorSpec(oname, o.dtype, o.shape))
                continue
            entry = next(n for n in nodes if n.name == src)
            served = {t[0]: t for t in entry.served_outputs(loops)}
            vt = graph.values[src]
            dtype, shape = (served[src][1], tuple(served[src][2])) if src in served else (
                getattr(entry, "dtype", None) or vt.dtype, tuple(-1 for _ in vt.shape) or (-1,))  # fmt: skip
            out_specs.append(TensorSpec(oname, dtype, shape))
        for n in nodes:  # e.g. the LLM's final answer (token ids) and its loop's iteration count
            out_specs += [TensorSpec(*t) for t in n.served_outputs(loops)]
        agent = AgentPlanSection(
            name=graph.name,
            nodes=nodes,
            loops=loops,
            outputs=outputs_map,
            notes=notes,
            search_below=int(search_below),
            streams=[tuple(x) for x in gattrs.get("streams", ()) or ()],
        )
        agent.workers = _worker_table(agent, stages, host)
        plan_json = {"agent": agent.to_json(), "plan": plan.to_json()}
        model_sha = hashlib.sha256(spec_path.read_bytes()).hexdigest()
        path = write_bundle(
            out_path,
            name=graph.name,
            inputs=input_specs,
            outputs=out_specs,
            stages=stages,
            plan_mlir=_plan_text(graph, plan),
            plan_json=plan_json,
            model_sha256=model_sha,
            fleet=fleet.model_dump() if hasattr(fleet, "model_dump") else {},
            sla={"latency_s": sla.latency_s, "ttft_s": sla.ttft_s, "tbt_s": sla.tbt_s},
            plan_summary={
                "kind": "agent",
                "solver": plan.solver,
                "gap": plan.gap,
                "latency_s": plan.latency_s,
                "throughput_rps": plan.throughput_rps,
                "usd_per_hour": plan.usd_per_hour,
                "usd_per_request": plan.usd_per_request,
                "rps": plan.rps,
                "stages": len(plan.stages),
                "assignment": dict(plan.assignment),
                "notes": notes,
            },
            host_target=host,
            sign_key=sign_key,
        )
    devices = {n.name: n.device_label() for n in nodes}
    return AgentCompileResult(Path(path), plan, devices, tuple(notes), time.perf_counter() - t0)


def _worker_table(
    agent: AgentPlanSection, stages: list[Any], host: dict[str, Any]
) -> list[WorkerRow]:
    """One row per served worker (stage of the unrolled DAG): runner, class, target, fallback target."""
    from terrazzo.bundle import StageInfo
    from terrazzo.runtime.agent_plan import AgentPlanBuilder, runner_kind

    infos = {
        st.index: StageInfo(
            st.index,
            st.device,
            dict(st.target),
            st.fallback_reason,
            st.inputs,
            st.outputs,
            st.replicas,
            st.ops,
        )  # fmt: skip
        for st in stages
    }
    rows = []
    for spec in AgentPlanBuilder(agent, infos, "<bundle>", None, "<memory>").build():
        gpu = spec.target not in ("llvm", "c")
        rows.append(WorkerRow(
            stage=spec.index, runner=runner_kind(spec),
            device=spec.device, target=spec.target, inputs=list(spec.inputs),
            outputs=list(spec.outputs),
            fallback_target=host if gpu or spec.fallback_reason else None,
        ))  # fmt: skip
    return rows


def _plan_text(graph: Graph, plan: Plan) -> str:
    """tz-dialect text of the decomposed, placed agent graph."""
    from terrazzo.frontend import decompose
    from terrazzo.ir.dialect import print_graph

    g = decompose(graph, models=False)
    stage_of = {t: s.index for s in plan.stages for t in s.ops}
    placement = {}
    for op in g.ops:
        key = op.name if op.name in plan.assignment else f"{op.name.rsplit('.', 1)[0]}.prefill"
        if op.op_class == "kv_transfer":  # placed with the phase that receives it
            key = f"{op.name.rsplit('.', 1)[0]}.decode"
        placement[op.name] = (plan.assignment[key], stage_of.get(key, 0))
    return print_graph(g.with_placement(placement))
