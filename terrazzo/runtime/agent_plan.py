"""Agent bundle → ``ServingPlan``: one stage per model node, LLM phase, tool, retrieval and memory node, loops unrolled.

``terrazzo.pipeline.compile_agent`` writes ``plan.json["agent"]`` (the typed
``terrazzo.frontend.agent_schema.AgentPlanSection``, validated when the bundle is opened); this
module turns it into the stage DAG the gateway executes (values routed by name, every stage a worker process).
Each ``llm`` node becomes two stages — prefill and decode — on their planned device classes,
so the KV cache travels from the prefill worker to the decode worker as gRPC tensors.

Conditional loops (the paper's LLM ⇄ search loop) are **unrolled** to ``max_iterations``
copies of the loop body rather than run as a loop inside one stage: a loop inside one stage
would put the LLM phases, the tool and the retrieval in one process and lose the P::D split
and the CPU placement of tools. Iteration ``i > 0`` of the body reads an ``active`` flag that
its head (the LLM's prefill) computes from the condition; when it is 0 every stage of that
iteration passes its previous value through unchanged (the prefill sends empty caches), so
the values of the last iteration are those of the last iteration that ran. The price is
``max_iterations`` sets of body workers; requests pay only a few pass-through hops.

Value names: iteration ``i < K-1`` of body value ``v`` is ``v__it<i>``; the last iteration
keeps the plain name so consumers after the loop read it unchanged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import ServingError
from terrazzo.frontend.agent_schema import AgentNodeEntry, AgentPlanSection, parse_agent_section
from terrazzo.frontend.kinds import find_kind, register_hooks
from terrazzo.ir import TensorSpec
from terrazzo.runtime.plan import RunnerSpec, ServingPlan, StageSpec, sla_latency
from terrazzo.runtime.tensors import v2_datatype

_R = "terrazzo.runtime.agent_runners:"


def is_agent_bundle(path: str | Path, trust_key: Any = None) -> bool:
    """True when the (verified) bundle was written by the agent compiler."""
    from terrazzo.bundle import open_bundle

    with open_bundle(path, trust_key=trust_key) as b:
        pj = b.plan_json
    return bool(pj and "agent" in pj)


def _trust_json(trust_key: object) -> Any:
    if trust_key is None or isinstance(trust_key, str | int | float):
        return trust_key
    if isinstance(trust_key, bytes):
        return {"hex": trust_key.hex()}
    if isinstance(trust_key, Mapping):  # the JSON trust policy (Bundle.worker_trust)
        return dict(trust_key)
    return str(trust_key)


def agent_serving_plan(
    path: str | Path, trust_key: Any = None, store_dir: str | Path | None = None
) -> ServingPlan:
    """Open and verify an agent bundle and build its ServingPlan.

    Args:
        path: the ``.tzb`` written by ``compile_agent``.
        trust_key: public key the bundle signature must verify against.
        store_dir: directory of the file-backed ``memory.load/store`` (default: a fresh temp dir,
            so each served instance starts with empty memory).

    Raises:
        BundleError: the bundle fails verification.
        ServingError: the bundle is not an agent bundle or its graph is not servable.
    """
    from terrazzo.bundle import open_bundle

    bundle_path = str(Path(path).resolve())
    with open_bundle(bundle_path, trust_key=trust_key) as b:
        agent = b.agent
        infos = {s.index: s for s in b.stages}
        in_specs = b.inputs
        out_specs = b.outputs
        sla = b.manifest.get("sla")
    if agent is None:
        raise ServingError(f"{path} is not an agent bundle (plan.json has no 'agent' section)")
    store = str(store_dir or tempfile.mkdtemp(prefix="tz-agent-memory-"))
    builder = _PlanBuilder(agent, infos, bundle_path, _trust_json(trust_key), store)
    stages = builder.build()
    outputs = [TensorSpec(t.name, v2_datatype(t.dtype), tuple(t.shape)) for t in out_specs]
    outputs += [t for t in builder.extra_outputs if t.name not in {o.name for o in outputs}]
    plan = ServingPlan(
        model_name=agent.name,
        inputs=tuple(TensorSpec(t.name, v2_datatype(t.dtype), tuple(t.shape)) for t in in_specs),
        outputs=tuple(outputs),
        stages=stages,
        bundle_path=bundle_path,
        sla_latency_s=sla_latency(sla),
    )
    plan.verify()
    return plan


# Runners that need no torch/onnx are built through the runtime's own ``build_runner`` so the
# local launcher forks them from its TVM-preloaded fork server (with torch/onnx blocked, so a
# runner that did need them fails loudly) instead of spawning a fresh interpreter that imports
# TVM again; tools run user code that may import anything, so they get a fresh process.
_TRAMPOLINE = "terrazzo.runtime.runners:build_runner"


def _runner_spec(factory: str, kwargs: dict[str, Any], spawn: bool = False) -> RunnerSpec:
    factory = factory if ":" in factory else _R + factory
    if spawn:
        return RunnerSpec(factory, kwargs)
    return RunnerSpec(_TRAMPOLINE, {"factory": factory, "kwargs": kwargs})


def runner_kind(stage: StageSpec) -> str:
    """The agent runner a stage runs (``llm_prefill``, ``llm_decode``, ``tool``, ...)."""
    spec = stage.runner
    factory = str(spec.kwargs["factory"]) if spec.factory == _TRAMPOLINE else spec.factory
    return factory.rsplit(":", 1)[1]


def _cuda_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def _serve_fallback(info: Any) -> str | None:
    """Why a compiled stage does not run on its planned device here (None when it does or is a CPU stage)."""
    if info is None:
        return None
    if info.fallback_reason:
        return str(info.fallback_reason)
    kind = str(info.target.get("kind", "llvm"))
    if kind == "cuda" and not _cuda_present():
        arch = info.target.get("arch", "")
        return f"planned on {info.device} (cuda {arch}); no CUDA device here, so the host-CPU build serves"
    return None


@dataclass(frozen=True, slots=True)
class NodeStep:
    """One copy of a node in the unrolled DAG, as a kind's ``runner`` hook sees it.

    Attributes:
        loop / iteration: its loop (None outside loops) and the copy's iteration.
        preds: the value names it reads for its inputs (this iteration's where in the loop).
        out: the value name it produces.
        gate: ``{"active", "prev"}`` value names for iterations after the first of a loop it
            does not head (pass ``prev`` through when ``active`` is 0), else empty;
            ``gate_inputs`` the same names as a list.
    """

    loop: str | None
    iteration: int
    preds: list[str]
    out: str
    gate: dict[str, Any]
    gate_inputs: list[str]


class AgentPlanBuilder:
    """Unrolls a typed agent section into stages; kinds add theirs through ``add``."""

    def __init__(
        self,
        agent: AgentPlanSection | Mapping[str, Any],
        infos: Mapping[int, Any],
        path: str,
        trust: Any,
        store: str,
    ):
        if not isinstance(agent, AgentPlanSection):
            try:
                agent = parse_agent_section(agent)
            except ValueError as e:
                raise ServingError(f"plan.json 'agent' section: {e}") from None
        self.agent = agent
        self.infos = infos
        self.path = path
        self.trust = trust
        self.store = store
        self.nodes = {n.name: n for n in agent.nodes}
        self.loops = dict(agent.loops)
        self.outputs = dict(agent.outputs)  # output name → value
        self.stages: list[dict[str, Any]] = []
        self.extra_outputs: list[TensorSpec] = []
        self.streams = {src: dst for src, dst in agent.streams}  # LLM → streamed token model
        self._gates: list[list[Any]] = []  # the current node's (arm value, arm index) gates
        self._loop_active: str | None = None

    # -- naming ----------------------------------------------------------------------------
    def _k(self, loop: str | None) -> int:
        return int(self.loops[loop].max_iterations) if loop else 1

    def val(self, node: str, i: int) -> str:
        """Value name of ``node``'s output as seen from iteration ``i`` of its own loop."""
        loop = self.nodes[node].loop
        if loop is None or i >= self._k(loop) - 1:
            return node
        return f"{node}__it{i}"

    def ref(self, pred: str, consumer_loop: str | None, i: int) -> str:
        """Name a consumer in iteration ``i`` of ``consumer_loop`` reads for ``pred``."""
        same = consumer_loop is not None and self.nodes[pred].loop == consumer_loop
        return self.val(pred, i) if same else pred

    def _names(self, node: str, i: int, suffix: str, loop: str | None) -> str:
        base = f"{node}.{suffix}"
        return base if loop is None or i >= self._k(loop) - 1 else f"{base}__it{i}"

    # -- stages ---------------------------------------------------------------------------
    def add(
        self,
        device: str,
        inputs: list[str],
        outputs: list[str],
        factory: str,
        kwargs: dict[str, Any],
        bundle_stage: int | None = None,
        *,
        spawn: bool = False,
    ) -> None:
        """Add one served stage (a worker).

        Args:
            device: its device class.
            inputs / outputs: value names it reads and writes.
            factory: a runner factory, ``"module:function"`` or the name of one in
                ``terrazzo.runtime.agent_runners``.
            kwargs: the factory's keyword arguments (JSON-able).
            bundle_stage: the compiled bundle stage it runs, if any (replicas, target).
            spawn: run it in a fresh interpreter rather than the TVM-preloaded fork server
                (user code that may import anything).
        """
        info = self.infos.get(bundle_stage) if bundle_stage is not None else None
        if self._gates:  # a stage inside a branch arm: skipped when its arm is not taken
            full = factory if ":" in factory else _R + factory
            gate_kw = {"factory": full, "kwargs": kwargs, "gates": self._gates,
                       "outputs": list(outputs), "loop_active": self._loop_active}  # fmt: skip
            inputs = [*inputs, *(g[0] for g in self._gates)]
            factory, kwargs = "gated", gate_kw
        self.stages.append(
            {
                "device": device,
                "inputs": tuple(dict.fromkeys(inputs)),
                "outputs": tuple(outputs),
                "runner": _runner_spec(factory, kwargs, spawn),
                "replicas": int(info.replicas) if info is not None else 1,
                "target": str(info.target.get("kind", "llvm")) if info is not None else "llvm",
                "fallback_reason": _serve_fallback(info),
            }
        )

    def build(self) -> tuple[StageSpec, ...]:
        for node in self.agent.nodes:
            loop = node.loop
            if loop is not None and self.loops[loop].dst not in self.nodes:
                raise ServingError(f"loop {loop!r} starts at unknown node")
            for i in range(self._k(loop)):
                self._node(node, loop, i)
        return self._ordered()

    def _alias(self, node: str, value: str) -> list[str]:
        return [value] + [o for o, src in self.outputs.items() if src == node and value == node]

    def alias(self, node: str, value: str) -> list[str]:
        """``value`` plus the agent outputs that name ``node`` (served under both names)."""
        return self._alias(node, value)

    def _node(self, n: AgentNodeEntry, loop: str | None, i: int) -> None:
        name = n.name
        preds = [self.ref(p, loop, i) for p in n.inputs]
        out = self.val(name, i)
        gate: dict[str, Any] = {}
        gate_inputs: list[str] = []
        if loop is not None and i > 0 and self.loops[loop].dst != name:
            gate = {"active": self._names(loop, i, "active", loop), "prev": self.val(name, i - 1)}
            gate_inputs = [gate["active"], gate["prev"]]
        if name in self.streams.values():
            return  # a streamed model runs inside its LLM's decode stage (_llm)
        kind = find_kind(n.kind)
        if kind is None or kind.runner is None:
            raise ServingError(f"agent node {name!r}: no runner for kind {n.kind!r}")
        self._gates = self.gate_refs(n.gates, loop, i)
        self._loop_active = gate.get("active")
        first = len(self.stages)
        try:
            kind.runner(self, n, NodeStep(loop, i, preds, out, gate, gate_inputs))
        finally:
            self._gates, self._loop_active = [], None
        if out == name:  # serve the node's value under the agent outputs that name it too
            self._alias_outputs(first, name)

    def _alias_outputs(self, first: int, name: str) -> None:
        names = self._alias(name, name)[1:]
        for st in self.stages[first:]:
            missing = [o for o in names if name in st["outputs"] and o not in st["outputs"]]
            if missing:
                spec = st["runner"]
                kw = {"factory": spec.factory, "kwargs": spec.kwargs, "value": name,
                      "names": missing}  # fmt: skip
                st["runner"] = _runner_spec("aliased", kw, spawn=spec.factory != _TRAMPOLINE)
                st["outputs"] = (*st["outputs"], *missing)

    def arm_value(self, branch: str, loop: str | None, i: int) -> str:
        """Value name of ``branch``'s arm index as seen from iteration ``i`` of ``loop``."""
        same = loop is not None and self.nodes[branch].loop == loop
        return self._names(branch, i, "arm", loop if same else None)

    def gate_refs(self, gates: Any, loop: str | None, i: int) -> list[list[Any]]:
        """``[[arm value, arm index], ...]`` for a node's ``(branch, arm)`` gates."""
        out: list[list[Any]] = []
        for b, arm in gates:
            entry = self.nodes[b]
            arms = [*getattr(entry, "arms", {}), getattr(entry, "default", "")]
            out.append([self.arm_value(b, loop, i), list(dict.fromkeys(arms)).index(arm)])
        return out

    def _llm(self, n: Any, loop: str | None, i: int, preds: list[str], out: str) -> None:
        name = n.name
        cfg = n.config

        def nm(role: str) -> str:
            return self._names(name, i, role, loop)

        roles = {r: nm(r) for r in ("logits", "k_cache", "v_cache", "length", "prompt")}
        loop_kw: dict[str, Any] | None = None
        extra_in: list[str] = []
        if loop is not None:
            lp = self.loops[loop]
            if lp.dst != name:
                raise ServingError(f"llm node {name!r} is inside loop {loop!r} but is not its head")
            roles["active"] = self._names(loop, i, "active", loop)
            roles["iterations"] = self._names(loop, i, "iterations", loop)
            loop_kw = {"first": True}
            if i > 0:
                loop_kw = {
                    "feedback": self.val(lp.src, i - 1),
                    "prev_answer": self.val(name, i - 1),
                    "prev_active": self._names(loop, i - 1, "active", loop),
                    "prev_iterations": self._names(loop, i - 1, "iterations", loop),
                    "search_below": int(n.search_below),
                }
                if lp.while_ is not None:  # a real exit condition on a value of iteration i-1
                    on = str(lp.while_.get("node") or name)
                    loop_kw["while_on"] = self.ref(on, loop, i - 1)
                    loop_kw["condition"] = dict(lp.while_)
                extra_in = [v for k, v in loop_kw.items() if k not in ("search_below", "condition")]
            if i == self._k(loop) - 1:
                self.extra_outputs.append(TensorSpec(roles["iterations"], "int64", (1,)))
        pre = n.prefill
        self.add(
            pre.device,
            preds + extra_in,
            list(roles.values()),
            "llm_prefill",
            {
                "path": self.path,
                "index": pre.stage,
                "parts": preds,
                "out": roles,
                "prompt_len": int(cfg.prompt_len),
                "vocab": int(cfg.vocab_size),
                "loop": loop_kw,
                "trust_key": self.trust,
            },
            pre.stage,
        )
        dec = n.decode
        dec_in = [roles[r] for r in ("logits", "k_cache", "v_cache", "length")]
        gate: dict[str, Any] = {}
        if loop is not None and i > 0:
            gate = {"active": roles["active"], "prev": self.val(name, i - 1)}
            dec_in += [gate["active"], gate["prev"]]
        batched: dict[str, Any] = {}
        if loop is None and n.decode_batch:  # continuous batching across conversations
            batched = {"batched": {"stages": dict(n.decode_batch), "kv": dict(n.kv),
                                   "config": cfg.model_dump()}}  # fmt: skip
        if name in self.streams and loop is None:  # decode → model, pipelined chunk by chunk
            tts: Any = self.nodes[self.streams[name]]
            info = self.infos[tts.stage]
            tts_outs = self._alias(tts.name, tts.name)
            self.add(
                dec.device,
                dec_in,
                [out, *tts_outs],
                "llm_decode_stream",
                {
                    "path": self.path,
                    "index": dec.stage,
                    "inputs": {r: roles[r] for r in ("logits", "k_cache", "v_cache", "length")},
                    "output": out,
                    "max_new_tokens": int(n.max_new_tokens),
                    "model_index": tts.stage,
                    "model_input": info.inputs[0].name,
                    "model_shape": list(info.inputs[0].shape),
                    "model_outputs": tts_outs,
                    "trust_key": self.trust,
                    **batched,
                    **({"model_batch_stages": dict(tts.batch_stages)} if tts.batch_stages else {}),
                },
                dec.stage,
            )
            if out == name:
                self.extra_outputs.append(TensorSpec(name, "int64", (int(n.max_new_tokens),)))
                self.extra_outputs.append(TensorSpec(roles["prompt"], "int64", (-1,)))
            return
        self.add(
            dec.device,
            dec_in,
            [out],
            "llm_decode",
            {
                "path": self.path,
                "index": dec.stage,
                "inputs": {r: roles[r] for r in ("logits", "k_cache", "v_cache", "length")},
                "output": out,
                "max_new_tokens": int(n.max_new_tokens),
                "trust_key": self.trust,
                **gate,
                **batched,
            },
            dec.stage,
        )
        if out == name:
            self.extra_outputs.append(TensorSpec(name, "int64", (int(n.max_new_tokens),)))
            self.extra_outputs.append(TensorSpec(roles["prompt"], "int64", (-1,)))

    def _ordered(self) -> tuple[StageSpec, ...]:
        """Stages in a topological order of their value dependencies (Kahn, stable)."""
        produced = {v: k for k, st in enumerate(self.stages) for v in st["outputs"]}
        deps = {
            k: {produced[v] for v in st["inputs"] if v in produced}
            for k, st in enumerate(self.stages)
        }
        order: list[int] = []
        done: set[int] = set()
        while len(order) < len(self.stages):
            ready = [k for k in range(len(self.stages)) if k not in done and deps[k] <= done]
            if not ready:
                raise ServingError("agent stages form a cycle")
            order.append(ready[0])
            done.add(ready[0])
        return tuple(
            StageSpec(
                index=pos,
                device=str(st["device"]),
                inputs=st["inputs"],
                outputs=st["outputs"],
                runner=st["runner"],
                replicas=st["replicas"],
                target=st["target"],
                fallback_reason=st["fallback_reason"],
            )
            for pos, st in enumerate(self.stages[k] for k in order)
        )


_PlanBuilder = AgentPlanBuilder  # the name tests and older callers use


# -- runner hooks of the built-in kinds ---------------------------------------------------------
def _run_input(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    return None  # the gateway feeds the request's tensors


def _run_model(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    if st.loop is not None:
        raise ServingError(f"model node {n.name!r} inside loop {st.loop!r} is not supported")
    info = b.infos[n.stage]
    feeds = dict(zip([s.name for s in info.inputs], st.preds, strict=True))
    outs = b.alias(n.name, st.out)
    kwargs: dict[str, Any] = {"path": b.path, "index": n.stage, "feeds": feeds, "output": outs,
                              "trust_key": b.trust}  # fmt: skip
    if n.batch_stages:  # merged across concurrent conversations (agent_runners.BatchedStage)
        kwargs["batch_stages"] = dict(n.batch_stages)
    b.add(n.device, st.preds, outs, "model_stage", kwargs, n.stage)


def _run_llm(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    b._llm(n, st.loop, st.iteration, st.preds, st.out)


def _run_tool(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    kwargs = {"function": n.function, "input": src, "output": st.out, "dtype": n.dtype, **st.gate}
    b.add(n.device, [src, *st.gate_inputs], [st.out], "tool", kwargs, spawn=True)


def _run_retrieve(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    if n.index_b64:  # text retrieval: faiss index and passages in the bundle
        kw = {"path": b.path, "node": n.name, "input": src, "output": st.out, "top_k": n.top_k,
              "trust_key": b.trust, **st.gate}  # fmt: skip
        factory = "terrazzo.runtime.agent_text:retrieve_text"
        b.add(n.device, [src, *st.gate_inputs], [st.out], factory, kw)
        return
    kwargs = {"embeddings": n.embeddings, "top_k": n.top_k, "input": src, "output": st.out,
              **st.gate}  # fmt: skip
    b.add(n.device, [src, *st.gate_inputs], [st.out], "retrieve", kwargs)


def _run_memory_load(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    kwargs = {"store_dir": b.store, "key": n.key, "output": st.out, "dtype": n.dtype or "int32"}
    b.add(n.device, st.preds, [st.out], "memory_load", kwargs)


def _run_memory_store(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    if st.gate:
        raise ServingError(f"memory.store {n.name!r} inside a loop is not supported")
    kwargs = {"store_dir": b.store, "key": n.key, "input": src, "output": st.out}
    b.add(n.device, [src], [st.out], "memory_store", kwargs)


def _run_branch(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    arm_names = list(dict.fromkeys([*n.arms, n.default]))
    arm_out = b._names(n.name, st.iteration, "arm", st.loop)
    arms = [[arm_names.index(a), c] for a, c in n.arms.items()]
    extra: list[str] = []
    for _, c in arms:  # a condition testing another node's value reads it too
        if c.get("node"):
            c["node"] = b.ref(str(c["node"]), st.loop, st.iteration)
            extra.append(c["node"])
    kwargs: dict[str, Any] = {"input": src, "output": st.out, "arm_output": arm_out, "arms": arms,
                              "default_index": arm_names.index(n.default), **st.gate}  # fmt: skip
    ins = [src, *extra, *st.gate_inputs]
    if st.gate:
        kwargs["prev_arm"] = b._names(n.name, st.iteration - 1, "arm", st.loop)
        ins.append(kwargs["prev_arm"])
    b.add(n.device, ins, [st.out, arm_out], "branch", kwargs)


def _run_join(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    own = {tuple(g) for g in n.gates}
    inputs, extra = [], []
    ports = {int(i): (br, arm) for i, br, arm in n.input_ports}
    for k, (name, val) in enumerate(zip(n.inputs, st.preds, strict=True)):
        gates = [g for g in b.nodes[name].gates if tuple(g) not in own]
        if k in ports:  # an edge straight from a branch's arm (route.finish -> join)
            gates.append(ports[k])
        refs = b.gate_refs(gates, st.loop, st.iteration)
        inputs.append([val, refs])
        extra += [r[0] for r in refs]
    kwargs = {"inputs": inputs, "output": st.out, "mode": n.mode, **st.gate}
    b.add(n.device, [*st.preds, *extra, *st.gate_inputs], [st.out], "join", kwargs)


def _run_map(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    kwargs = {"function": n.function, "input": src, "output": st.out,
              "max_parallel": n.max_parallel, "dtype": n.dtype, **st.gate}  # fmt: skip
    b.add(n.device, [src, *st.gate_inputs], [st.out], "map_call", kwargs, spawn=True)


def _run_http(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    kwargs = {"method": n.method, "url": n.url, "path": n.path, "param": n.param,
              "location": n.location, "input": src, "output": st.out, "timeout_s": n.timeout_s,
              "retries": n.retries, "result": n.result, **st.gate}  # fmt: skip
    factory = "terrazzo.runtime.agent_http:http_tool"
    b.add(n.device, [src, *st.gate_inputs], [st.out], factory, kwargs)


def _run_mcp(b: AgentPlanBuilder, n: Any, st: NodeStep) -> None:
    (src,) = st.preds
    kwargs = {"url": n.url, "tool": n.tool, "argument": n.argument, "input": src,
              "output": st.out, "timeout_s": n.timeout_s, "retries": n.retries, **st.gate}  # fmt: skip
    factory = "terrazzo.runtime.agent_http:mcp_tool"
    b.add(n.device, [src, *st.gate_inputs], [st.out], factory, kwargs)


register_hooks("http", runner=_run_http)
register_hooks("mcp", runner=_run_mcp)
register_hooks("branch", runner=_run_branch)
register_hooks("join", runner=_run_join)
register_hooks("map", runner=_run_map)
register_hooks("input", runner=_run_input)
register_hooks("model", runner=_run_model)
register_hooks("llm", runner=_run_llm)
register_hooks("tool", runner=_run_tool)
register_hooks("retrieve", runner=_run_retrieve)
register_hooks("memory.load", runner=_run_memory_load)
register_hooks("memory.store", runner=_run_memory_store)


class LocalAgent:
    """A ServingPlan run in this process (same runners, no gRPC): ``LocalAgent(plan)(inputs)`` → every value.

    ``concurrent=False`` runs the stages one after another in plan order (the way a
    LangGraph-style loop runs its nodes); ``concurrent=True`` starts every stage as soon as the
    values it reads exist, on a thread pool, as the gateway does with its workers — independent
    branches overlap (TVM kernels, tool I/O and sleeps release the GIL).
    """

    def __init__(self, plan: ServingPlan, concurrent: bool = False, max_workers: int = 8):
        from terrazzo.runtime.runners import build_runner

        self.plan = plan
        self.runners = [build_runner(st.runner.factory, st.runner.kwargs) for st in plan.stages]
        self.concurrent = concurrent
        self._pool: Any = None
        if concurrent:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tz-agent")

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in inputs.items()}
        if not self.concurrent:
            for st, runner in zip(self.plan.stages, self.runners, strict=True):
                env.update(runner({v: env[v] for v in st.inputs}))
            return env
        return self._run_concurrent(env)

    def _run_concurrent(self, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = dict(enumerate(self.plan.stages))
        running: dict[Any, int] = {}
        while pending or running:
            for k, st in list(pending.items()):
                if all(v in env for v in st.inputs):
                    feed = {v: env[v] for v in st.inputs}
                    running[self._pool.submit(self.runners[k], feed)] = k
                    del pending[k]
            if not running:
                missing = sorted({v for st in pending.values() for v in st.inputs} - set(env))
                raise ServingError(f"agent stages wait for values nothing produces: {missing}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                del running[fut]
                env.update(fut.result())
        return env

    def close(self) -> None:
        """Stop the thread pool (concurrent mode) and the runners' batching engines."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for runner in self.runners:
            engine = getattr(runner, "engine", None)
            if engine is not None:
                engine.stop()


def run_agent_bundle(
    path: str | Path, inputs: Mapping[str, np.ndarray], trust_key: Any = None
) -> dict[str, np.ndarray]:
    """Run an agent bundle once in this process and return its served outputs (for ``terrazzo run``)."""
    plan = agent_serving_plan(path, trust_key=trust_key)
    env = LocalAgent(plan)(inputs)
    return {t.name: env[t.name] for t in plan.outputs}
