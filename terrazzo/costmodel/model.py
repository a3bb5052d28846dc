"""The cost model: per-op latency and memory on a device class, and transfer costs, for placement.

latency(op, dev) = max(FLOPs / (peak · e_compute), bytes / (bandwidth · e_memory)) + launch,
with efficiencies per op class and device kind (priors) or per device (calibration
profiles); measured profiles, when given, win over both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import IR_DTYPE_TO_KEY, DeviceSpec, unknown_device_message
from terrazzo.costmodel.efficiency import DEFAULT_LAUNCH_OVERHEAD_S, Efficiency, default_efficiency
from terrazzo.costmodel.measured import MeasuredProfile
from terrazzo.costmodel.profile import CalibrationProfile, efficiency_key, op_work
from terrazzo.costmodel.transfer import Link, link_between
from terrazzo.errors import CostModelError
from terrazzo.ir import Graph, Op

_FIXED_LATENCY_CLASSES = frozenset({"tool", "retrieve", "memory", "io"})
_TENSOR_CLASSES = frozenset(
    {"matmul", "conv", "elementwise", "reduction", "softmax", "norm", "data_movement", "other"}
)


def is_folded_constant(op: Op) -> bool:
    """An op of model tensors that reads only weights (e.g. ``permute_dims(W)``): TVM folds it at build time."""
    return not op.inputs and op.param_bytes > 0 and op.op_class in _TENSOR_CLASSES


def fold_weights(graph: Graph) -> Graph:
    """Attribute the outputs of build-time-constant ops to their consumers' ``param_bytes``.

    Frontends emit ``W' = permute_dims(W)`` as its own op; after TVM's FoldConstant the
    consumer (``matmul(x, W')``) reads a weight, which is what its cost depends on.
    """
    from dataclasses import replace

    const_out = {
        v: graph.values[v].nbytes for o in graph.ops if is_folded_constant(o) for v in o.outputs
    }
    if not const_out:
        return graph
    ops = []
    for o in graph.ops:
        extra = sum(const_out.get(v, 0) for v in o.inputs)
        ops.append(replace(o, param_bytes=o.param_bytes + extra) if extra else o)
    return graph.with_ops(ops)


def _as_profiles(
    calibration: CalibrationProfile | str | Path | Iterable[CalibrationProfile | str | Path] | None,
) -> tuple[CalibrationProfile, ...]:
    if calibration is None:
        return ()
    if isinstance(calibration, CalibrationProfile | str | Path):
        calibration = [calibration]
    out = []
    for c in calibration:
        out.append(c if isinstance(c, CalibrationProfile) else CalibrationProfile.load(c))
    return tuple(out)


class CostModel:
    """Latency, memory and transfer costs of ops on the devices of a catalog.

    Args:
        catalog: name → DeviceSpec (``load_catalog(...)``).
        calibration: one or more calibration profiles (objects or JSON paths); a later
            profile overrides an earlier one for the devices it applies to. A profile for a
            device not in the catalog (``local-cpu``) adds that device.
        measured: measured per-task, per-device latency and cost; used whenever it covers
            the (op name, device) pair asked for.
    """

    def __init__(
        self,
        catalog: Mapping[str, DeviceSpec],
        calibration: CalibrationProfile
        | str
        | Path
        | Iterable[CalibrationProfile | str | Path]
        | None = None,
        measured: MeasuredProfile | None = None,
    ) -> None:
        devices = dict(catalog)
        self._profiles: dict[str, CalibrationProfile] = {}
        for prof in _as_profiles(calibration):
            if prof.device_spec is not None:
                devices.setdefault(prof.device, prof.device_spec)
            for name in prof.applies_to:
                self._profiles[name] = prof
        self.devices: Mapping[str, DeviceSpec] = devices
        self.measured = measured

    # -- lookup ---------------------------------------------------------------------------------
    def device(self, dev: DeviceSpec | str) -> DeviceSpec:
        """The DeviceSpec for a spec or a device name.

        Raises:
            CostModelError: unknown name (suggests the closest one).
        """
        if isinstance(dev, DeviceSpec):
            return dev
        spec = self.devices.get(dev)
        if spec is None:
            raise CostModelError(unknown_device_message(dev, self.devices))
        return spec

    def calibration_for(self, dev: DeviceSpec | str) -> CalibrationProfile | None:
        """The calibration profile that applies to a device, if any."""
        return self._profiles.get(dev if isinstance(dev, str) else dev.name)

    def efficiency(
        self, op_class: str, dev: DeviceSpec | str, work: float = 0.0, kind: str | None = None
    ) -> Efficiency:
        """Efficiency for an op (class, optional kind) of size ``work`` on a device (calibrated, else the prior)."""
        spec = self.device(dev)
        prof = self._profiles.get(spec.name)
        if prof is not None:
            eff = prof.efficiency_for(op_class, work, kind)
            if eff is not None:
                return eff
        return default_efficiency(spec.kind, op_class)

    def launch_overhead_s(self, dev: DeviceSpec | str) -> float:
        """Fixed per-op cost on a device (calibrated, else the prior for its kind)."""
        spec = self.device(dev)
        prof = self._profiles.get(spec.name)
        if prof is not None:
            return prof.launch_overhead_s
        return DEFAULT_LAUNCH_OVERHEAD_S[spec.kind]

    # -- ops ------------------------------------------------------------------------------------
    def op_latency_s(self, op: Op, dev: DeviceSpec | str, dtype: str | None = None) -> float:
        """Predicted latency of one op on one device class.

        Args:
            op: the operator (its ``flops``, ``bytes_*``, ``param_bytes`` and ``op_class``).
            dev: a DeviceSpec or a device name.
            dtype: compute dtype (ir or catalog name); default: the op's ``dtype`` attribute,
                else fp32.

        Ops of class ``llm_prefill``/``llm_decode`` that name a model (``preset`` or ``model``
        attribute, or the architecture attributes ``layers``, ``d_model``, ``heads``,
        ``kv_heads``, ``ffn_dim``, ``vocab`` that the agent frontend writes) use the LLM phase
        model with attributes ``input_tokens``, ``output_tokens``, ``batch``, ``dtype``, ``tp``;
        a decode op costs ``output_tokens`` steps. ``tool``/``retrieve``/``memory``/``io`` ops
        with ``latency_s`` or ``latency_ms`` use that fixed figure. Ops that read only
        weights cost 0 (folded at build time); call ``fold_weights(graph)`` first so their
        consumers count those weights.
        """
        name = dev if isinstance(dev, str) else dev.name
        if self.measured is not None:
            m = self.measured.latency_s(op.name, name)
            if m is not None:
                return m
        spec = self.device(dev)
        if is_folded_constant(op):
            return 0.0
        fixed = self._fixed_latency_s(op)
        if fixed is not None:
            return fixed
        cfg = _llm_config(op)
        if cfg is not None:
            return self._llm_latency_s(op, cfg, spec)
        prof = self._profiles.get(spec.name)
        if prof is not None and op.kind in prof.zero_cost_kinds:
            return 0.0
        dt = dtype or str(op.attr("dtype", "fp32"))
        # Frontends count the weights an op reads in bytes_read (and again in param_bytes).
        nbytes = op.bytes_read + op.bytes_written
        eff = self.efficiency(
            op.op_class,
            spec,
            op_work(op.op_class, op.flops, nbytes, op.param_bytes, op.bytes_read),
            efficiency_key(op.kind, op.op_class, op.param_bytes),
        )
        compute_s = op.flops / (spec.peak_flops_per_s(dt) * eff.compute) if op.flops else 0.0
        memory_s = nbytes / (spec.mem_bw_bytes_per_s * eff.memory) if nbytes else 0.0
        return max(compute_s, memory_s) + self.launch_overhead_s(spec)

    def op_cost_usd(self, op: Op, dev: DeviceSpec | str) -> float | None:
        """Measured cost of one request of this op on ``dev``, when a measured profile has it."""
        if self.measured is None:
            return None
        return self.measured.cost_usd(op.name, dev if isinstance(dev, str) else dev.name)

    @staticmethod
    def _fixed_latency_s(op: Op) -> float | None:
        if op.op_class not in _FIXED_LATENCY_CLASSES:
            return None
        if op.attr("latency_s") is not None:
            return float(op.attr("latency_s"))  # type: ignore[arg-type]
        if op.attr("latency_ms") is not None:
            return float(op.attr("latency_ms")) / 1e3  # type: ignore[arg-type]
        return None

    def _llm_latency_s(self, op: Op, cfg: llm.LLMConfig, spec: DeviceSpec) -> float:
        dt, batch, tp, isl, osl = _llm_shape(op)
        if op.op_class == "llm_prefill":
            eff = self.efficiency("llm_prefill", spec, llm.prefill_flops(cfg, isl, batch))
            return llm.prefill_latency_s(cfg, spec, isl, batch, dt, tp, eff)
        eff = self.efficiency("llm_decode", spec, 0.0)
        step = llm.decode_step_latency_s(cfg, spec, isl + osl // 2, batch, dt, tp, eff)
        return osl * step

    def op_memory_bytes(self, op: Op) -> int:
        """Memory an op holds while it runs: what it reads (weights included) and writes.

        LLM phase ops: weights plus the KV cache for input + output tokens.
        """
        cfg = _llm_config(op)
        if cfg is not None:
            dt, batch, tp, isl, osl = _llm_shape(op)
            ctx = isl + (osl if op.op_class == "llm_decode" else 0)
            return llm.memory_bytes_per_device(cfg, ctx, batch, dt, tp)
        return op.bytes_read + op.bytes_written

    # -- transfers ------------------------------------------------------------------------------
    def link(self, src: DeviceSpec | str, dst: DeviceSpec | str) -> Link:
        """The link between two device classes (same, pcie, network)."""
        if self.measured is not None and isinstance(src, str) and isinstance(dst, str):
            if src not in self.devices or dst not in self.devices:
                m = self.measured.transfer(src, dst)
                return Link("measured", float("inf"), m.latency_s)
        return link_between(self.device(src), self.device(dst))

    def transfer_latency_s(
        self, nbytes: float, src: DeviceSpec | str, dst: DeviceSpec | str
    ) -> float:
        """Seconds to move ``nbytes`` from ``src`` to ``dst``: latency + bytes / bandwidth, 0 on the same class.

        With a measured profile and device names it does not know from the catalog, the
        measured transfer latency (zero when unlisted) is returned.
        """
        src_name = src if isinstance(src, str) else src.name
        dst_name = dst if isinstance(dst, str) else dst.name
        if src_name == dst_name:
            return 0.0
        if self.measured is not None and (
            src_name not in self.devices or dst_name not in self.devices
        ):
            return self.measured.transfer(src_name, dst_name).latency_s
        return link_between(self.device(src), self.device(dst)).transfer_latency_s(nbytes)

    # -- graphs ---------------------------------------------------------------------------------
    def graph_latency_s(self, graph: Graph, dev: DeviceSpec | str) -> float:
        """Latency of the whole graph run op after op on one device class (no transfers)."""
        return sum(self.op_latencies_s(graph, dev).values())

    def graph_memory_bytes(self, graph: Graph) -> int:
        """Memory to hold a graph on one device: all weights + the largest op's inputs and outputs."""
        weights = sum(o.param_bytes for o in graph.ops)
        act = max((o.bytes_read + o.bytes_written for o in graph.ops), default=0)
        return weights + act

    def op_latencies_s(self, graph: Graph, dev: DeviceSpec | str) -> dict[str, float]:
        """op name → predicted latency on ``dev`` for every op of ``graph`` (weights folded, see ``fold_weights``)."""
        g = fold_weights(graph)
        return {op.name: self.op_latency_s(op, dev, _op_dtype(g, op)) for op in g.ops}


def _llm_config(op: Op) -> llm.LLMConfig | None:
    """The LLM an ``llm_prefill``/``llm_decode`` op runs, from a preset name or its arch attrs."""
    if op.op_class not in ("llm_prefill", "llm_decode"):
        return None
    name = op.attr("model", op.attr("preset"))
    if isinstance(name, str) and name in llm.PRESETS:
        return llm.PRESETS[name]
    a = op.attr_dict
    need = ("layers", "d_model", "heads", "kv_heads", "ffn_dim", "vocab")
    if not all(k in a for k in need):
        if isinstance(name, str) and name != "custom":
            llm.get_preset(name)  # raises, naming the known presets
        return None
    dt = _llm_shape(op)[0]
    params = op.param_bytes // llm.dtype_bytes(dt) if op.param_bytes else 0
    layers, d, heads, kvh, ffn, vocab = (int(a[k]) for k in need)  # type: ignore[call-overload,arg-type]
    if params <= 0:
        return llm.LLMConfig.llama(str(name or op.name), layers, d, heads, kvh, ffn, vocab)
    return llm.LLMConfig(str(name or op.name), layers, d, heads, kvh, ffn, vocab, params)


def _llm_shape(op: Op) -> tuple[str, int, int, int, int]:
    """(dtype key, batch, tp, input tokens, output tokens) of an LLM phase op."""
    dt = str(op.attr("dtype", "fp16"))
    dt = IR_DTYPE_TO_KEY.get(dt, dt)
    return (
        dt,
        int(op.attr("batch", 1)),  # type: ignore[arg-type]
        int(op.attr("tp", 1)),  # type: ignore[arg-type]
        int(op.attr("input_tokens", 512)),  # type: ignore[arg-type]
        int(op.attr("output_tokens", 1)),  # type: ignore[arg-type]
    )


def _op_dtype(graph: Graph, op: Op) -> str:
    explicit = op.attr("dtype")
    if explicit is not None:
        return str(explicit)
    for v in op.outputs:
        t = graph.values.get(v)
        if t is not None:
            return IR_DTYPE_TO_KEY.get(t.dtype, "fp32")
    return "fp32"


def describe(model: CostModel) -> dict[str, Any]:
    """A JSON-ready summary of which devices are calibrated (for CLI output)."""
    return {
        "devices": list(model.devices),
        "calibrated": {d: p.device for d, p in model._profiles.items()},
        "measured": bool(model.measured),
    }
