"""Agent frontend: YAML specs and a Python builder → an ``ir.Graph`` at ``level="agent"``, and its decomposition.

Node kinds follow the paper's Fig. 7 (``input.query``, ``llm.call``, ``tool.invoke``,
``memory.load``, ``memory.store``) plus ``model.call`` (an ONNX/torch model) and
``retrieve.topk`` (vector search). Each node is one op whose single output value carries the
node's name. Conditional loops are not cycles in the IR: the back edge is recorded as graph
attribute ``loops`` and every op of the body carries ``loop``, ``loop_expected_iterations``
(used for costing) and ``loop_max_iterations`` (the bound at execution).

``decompose(graph)`` splits ``llm.call`` into ``llm.prefill`` → ``llm.kv_transfer`` →
``llm.decode`` and each ``model.call`` into its granular operators (``<node>.<op>``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import numpy as np

from terrazzo.errors import FrontendError
from terrazzo.frontend.agent_spec import (
    LLM_PRESETS,
    AgentSpec,
    EdgeSpec,
    InputNode,
    LLMNode,
    LoopSpec,
    ModelNode,
    OutputNode,
    SyntheticEmbeddings,
    TensorSpec,
    parse_spec,
)
from terrazzo.frontend.kinds import LowerContext, find_kind, node_kind
from terrazzo.ir import AttrValue, Graph, LLMConfig, Op, TensorType, make_attrs

# LLM precision → IR dtype of its KV cache and bytes per element.
_LLM_DTYPE = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8": "float8",
    "int8": "int8",
}
_LLM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

# Torch modules handed to AgentBuilder.model(module=...), by the source attr they get.
_BUILDER_MODULES: dict[str, Any] = {}


def llm_config_from_hf(cfg: Mapping[str, Any], where: str, name: str = "llm") -> LLMConfig:
    """Read a transformers-style config (``hidden_size``, ``num_hidden_layers``, ...)."""
    need = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    )
    missing = [k for k in need if k not in cfg]
    if missing:
        raise FrontendError(f"{where}: config misses {', '.join(missing)}")
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    d = int(cfg["hidden_size"])
    sizes = {k: int(cfg[k]) for k in need}
    bad = [f"{k}={v}" for k, v in sizes.items() if v <= 0] + (
        [f"num_key_value_heads={kv}"] if kv <= 0 else []
    )
    if bad:
        raise FrontendError(f"{where}: {', '.join(bad)} must be > 0")
    if d % heads or heads % kv:
        raise FrontendError(
            f"{where}: hidden_size={d}, num_attention_heads={heads}, num_key_value_heads={kv} "
            "must divide evenly"
        )
    return LLMConfig.llama(
        name,
        int(cfg["num_hidden_layers"]),
        d,
        heads,
        kv,
        int(cfg["intermediate_size"]),
        int(cfg["vocab_size"]),
    )


def llm_arch_of(op: Op) -> LLMConfig:
    """The architecture recorded on an ``llm.call`` / ``llm.prefill`` / ``llm.decode`` op."""
    a = op.attr_dict
    return LLMConfig.llama(
        str(a.get("agent_node", op.name)),
        _int_attr(a["layers"]),
        _int_attr(a["d_model"]),
        _int_attr(a["heads"]),
        _int_attr(a["kv_heads"]),
        _int_attr(a["ffn_dim"]),
        _int_attr(a["vocab"]),
    )


def kv_bytes_per_token(arch: LLMConfig, dtype: str) -> int:
    """KV cache per token at an agent ``dtype`` (int8 included): 2 · layers · kv_heads · head_dim · bytes."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * _LLM_BYTES[dtype]


def _int_attr(v: AttrValue) -> int:
    """An integer-valued op attribute (``int()`` of a scalar; a tuple is a TypeError as before)."""
    if isinstance(v, tuple):
        raise TypeError(
            f"int() argument must be a string, a bytes-like object or a real number, not {v!r}"
        )
    return int(v)


def resolve_callable(ref: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function``.

    Args:
        ref: the reference; a ``.py`` path is taken relative to ``base_dir``.
        base_dir: directory of the spec that named it.

    Returns:
        The callable.

    Raises:
        FrontendError: the module or function does not exist or is not callable.
    """
    mod_part, _, fn_name = ref.rpartition(":")
    try:
        if mod_part.endswith(".py"):
            path = Path(mod_part)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise FrontendError(f"{ref!r}: file {path} does not exist")
            mod_name = f"_terrazzo_agent_{path.stem}_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_part)
    except ImportError as e:
        raise FrontendError(f"{ref!r}: cannot import {mod_part!r} ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise FrontendError(f"{ref!r}: {mod_part!r} has no callable {fn_name!r}")
    return fn  # type: ignore[no-any-return]


def _abs_ref(ref: str, base_dir: Path) -> str:
    mod_part, _, fn = ref.rpartition(":")
    if mod_part.endswith(".py") and not Path(mod_part).is_absolute():
        return f"{(base_dir / mod_part).resolve()}:{fn}"
    return ref


# ---------------------------------------------------------------------------------------------
# Lowering a spec to the agent-level graph
# ---------------------------------------------------------------------------------------------


def load_agent(path: str | Path) -> Graph:
    """Load an agent spec (YAML) as an ``ir.Graph`` at ``level="agent"``.

    Args:
        path: the ``.yaml`` file; relative file references in it are relative to its folder.

    Returns:
        The verified agent graph.

    Raises:
        FrontendError: the file is missing, not YAML, or breaks the schema (the message names
            the node and field).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"agent spec {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise FrontendError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    spec = parse_spec(data, where=str(p))
    return lower_spec(spec, base_dir=p.parent)


def lower_spec(spec: AgentSpec, base_dir: str | Path = ".") -> Graph:
    """Lower a validated :class:`AgentSpec` to a verified agent-level graph.

    Args:
        spec: the spec.
        base_dir: folder that relative file references are resolved against.

    Returns:
        The graph; ops in a topological order that keeps the spec's node order where free.
    """
    import networkx as nx

    from terrazzo.frontend.agent_flow import BranchNode, gate_analysis, split_port

    base = Path(base_dir).resolve()
    nodes = {n.name: n for n in spec.nodes}
    order_index = {n.name: i for i, n in enumerate(spec.nodes)}
    branches = {n.name: n for n in spec.nodes if isinstance(n, BranchNode)}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    port_gates: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    input_ports: dict[str, list[tuple[int, str, str]]] = {}  # a join's inputs read from an arm
    for e in spec.edges:  # an edge from a branch's arm (route.search) reads the branch's value
        src, arm = split_port(e.src, branches)
        if arm is not None:
            port_gates[e.dst].append((src, arm))
            input_ports.setdefault(e.dst, []).append((len(preds[e.dst]), src, arm))
        preds[e.dst].append(src)
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((p, n) for n, ps in preds.items() for p in ps)
    if not nx.is_directed_acyclic_graph(g):
        cycle = [u for u, _ in nx.find_cycle(g)]
        raise FrontendError(
            f"agent {spec.name!r} node {cycle[0]!r} field 'edges': the edges form a cycle without a "
            f"bound ({' -> '.join([*cycle, cycle[0]])}); express repetition as a 'loops' entry "
            "(a back edge with max_iterations)"
        )
    order = list(nx.lexicographical_topological_sort(g, key=lambda n: order_index[n]))
    kinds = {n: nodes[n].type for n in nodes}
    gates = gate_analysis(order, preds, port_gates, kinds, f"agent {spec.name!r}")

    loop_of = _loop_bodies(spec, g)
    values: dict[str, TensorType] = {}
    ops: list[Op] = []
    inputs: list[str] = []
    outputs: list[str] = []
    output_names: list[str] = []
    for name in order:
        node = nodes[name]
        where = f"agent {spec.name!r} node {name!r}"
        ins = tuple(preds[name])
        if isinstance(node, OutputNode):
            if len(ins) != 1:
                raise FrontendError(
                    f"{where} field 'edges': an output node needs exactly one incoming edge, "
                    f"found {len(ins)}"
                )
            outputs.append(ins[0])
            output_names.append(name)
            continue
        if isinstance(node, InputNode):
            arg = f"{name}_arg"
            if arg in nodes:
                raise FrontendError(
                    f"{where}: the name {arg!r} is reserved for the input's argument"
                )
            values[arg] = TensorType(tuple(node.shape), node.dtype)
            inputs.append(arg)
            ins = (arg,)
        elif not ins and node_kind(node.type).needs_input:
            raise FrontendError(f"{where}: has no incoming edge")
        if isinstance(node, ModelNode):  # text reaches a model only as byte tokens
            texts = [v for v in ins if values[v].dtype == "string"]
            token_input = node.onnx is None and all(
                t.dtype.startswith(("int", "uint")) for t in node.example_inputs.values()
            )
            if texts and not token_input:
                raise FrontendError(
                    f"{where} field 'inputs': {texts[0]!r} is text (dtype string) but the model "
                    "takes float tensors; put an embedder, tool or LLM between them"
                )
        op = _lower_node(node, ins, values, base, where)
        if node.type == "join" and name in input_ports:
            op = _with_attrs(op, input_ports=tuple(input_ports[name]))
        if gates.get(name):
            prob = 1.0
            for b, arm in gates[name]:
                prob *= branches[b].probability(arm)
            op = _with_attrs(op, gates=gates[name], gate_probability=float(prob))
        lp = loop_of.get(name)
        if lp is not None:
            op = _with_attrs(
                op,
                loop=lp.name,
                loop_expected_iterations=float(lp.expected_iterations),
                loop_max_iterations=int(lp.max_iterations),
            )
        ops.append(op)
    if not outputs:
        raise FrontendError(f"agent {spec.name!r}: no output node is connected")
    streams = _stream_edges(spec, nodes, preds, loop_of, gates)
    for lp in spec.loops:
        if gates.get(lp.dst):
            raise FrontendError(
                f"agent {spec.name!r} loop {lp.name!r} field 'to': the loop head {lp.dst!r} is "
                "inside a branch arm; put the branch inside the loop body instead"
            )
    loops = tuple(
        (
            lp.name,
            lp.src,
            lp.dst,
            int(lp.max_iterations),
            float(lp.expected_iterations),
            lp.condition,
        )
        for lp in spec.loops
    )
    graph = Graph(
        name=spec.name,
        ops=tuple(ops),
        values=values,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        level="agent",
        attrs=make_attrs(
            {
                "loops": loops,
                "loop_while": tuple(
                    (lp.name, json.dumps(lp.while_.as_json(), sort_keys=True))
                    for lp in spec.loops
                    if lp.while_ is not None
                ),
                "output_names": tuple(output_names),
                "streams": streams,
                "spec_dir": str(base),
            }
        ),
    )
    return graph.verify()


def _stream_edges(
    spec: AgentSpec,
    nodes: Mapping[str, Any],
    preds: Mapping[str, Sequence[str]],
    loop_of: Mapping[str, LoopSpec],
    gates: Mapping[str, Any],
) -> tuple[tuple[str, str], ...]:
    """The ``stream: true`` edges, checked: an LLM feeding a token-input model that reads nothing else."""
    out = []
    for e in spec.edges:
        if not e.stream:
            continue
        where = f"agent {spec.name!r} node {e.dst!r} field 'edges'"
        src, dst = nodes.get(e.src), nodes[e.dst]
        if not isinstance(src, LLMNode):
            raise FrontendError(f"{where}: a streamed edge must leave an llm node, not {e.src!r}")
        if not isinstance(dst, ModelNode) or dst.onnx is not None:
            raise FrontendError(f"{where}: a streamed edge must reach a torch model node")
        ins = list(dst.example_inputs.values())
        if len(ins) != 1 or not ins[0].dtype.startswith("int") or list(preds[e.dst]) != [e.src]:
            raise FrontendError(
                f"{where}: the streamed model must read only the LLM's tokens (one integer input)"
            )
        if e.src in loop_of or e.dst in loop_of or gates.get(e.dst) != gates.get(e.src):
            raise FrontendError(
                f"{where}: streamed edges inside loops or across arms are not supported"
            )
        out.append((e.src, e.dst))
    return tuple(out)


def _loop_bodies(spec: AgentSpec, g: Any) -> dict[str, LoopSpec]:
    import networkx as nx

    loop_of: dict[str, LoopSpec] = {}
    for lp in spec.loops:
        if lp.src == lp.dst:
            body = {lp.src}
        else:
            if not nx.has_path(g, lp.dst, lp.src):
                raise FrontendError(
                    f"loop {lp.name!r}: node {lp.src!r} is not downstream of {lp.dst!r}, "
                    "so the back edge does not close a loop"
                )
            body = nx.descendants(g, lp.dst) & nx.ancestors(g, lp.src) | {lp.src, lp.dst}
        for n in sorted(body):
            if n in loop_of:
                raise FrontendError(
                    f"node {n!r} is in loops {loop_of[n].name!r} and {lp.name!r}; nest none"
                )
            loop_of[n] = lp
    return loop_of


def _with_attrs(op: Op, **extra: Any) -> Op:
    from dataclasses import replace

    d = op.attr_dict
    d.update(extra)
    return replace(op, attrs=make_attrs(d))


def _nbytes(values: Mapping[str, TensorType], names: Sequence[str]) -> int:
    return sum(values[v].nbytes for v in names if v in values)


def _lower_node(
    node: Any, ins: tuple[str, ...], values: dict[str, TensorType], base: Path, where: str
) -> Op:
    kind = node_kind(node.type)
    low = kind.lower(node, LowerContext(ins, values, base, where))
    values[node.name] = low.output
    return Op(
        name=node.name,
        kind=kind.op_kind,
        inputs=ins,
        outputs=(node.name,),
        attrs=make_attrs(low.attrs),
        op_class=kind.op_class,
        flops=int(low.flops),
        bytes_read=_nbytes(values, ins),
        bytes_written=low.output.nbytes,
        param_bytes=int(low.param_bytes),
    )


def _llm_arch(node: LLMNode, base: Path, where: str) -> LLMConfig:
    if node.checkpoint is not None:
        from terrazzo.frontend.hf import read_hf_dir

        ck = read_hf_dir(base / node.checkpoint)
        return llm_config_from_hf(ck.config, f"{where} field 'checkpoint'")
    if node.preset is not None:
        return llm_config_from_hf(LLM_PRESETS[node.preset], where)
    cfg = node.config
    if isinstance(cfg, str):
        import json

        path = base / cfg
        if not path.is_file():
            raise FrontendError(f"{where} field 'config': file {path} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            raise FrontendError(f"{where} field 'config': {path} is not JSON ({e})") from None
    assert isinstance(cfg, dict)
    return llm_config_from_hf(cfg, f"{where} field 'config'")


def _embeddings_info(
    emb: str | SyntheticEmbeddings, base: Path, where: str
) -> tuple[int, int, int, str]:
    if isinstance(emb, SyntheticEmbeddings):
        return emb.rows, emb.dim, 4, f"synthetic:{emb.rows}x{emb.dim}:seed={emb.seed}"
    path = (base / emb).resolve()
    if not path.is_file():
        raise FrontendError(f"{where} field 'embeddings': file {path} does not exist")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FrontendError(
            f"{where} field 'embeddings': {path} is not a .npy array ({e})"
        ) from None
    if arr.ndim != 2:
        raise FrontendError(
            f"{where} field 'embeddings': expected a 2-D matrix, found shape {arr.shape}"
        )
    return int(arr.shape[0]), int(arr.shape[1]), int(arr.dtype.itemsize), str(path)


def load_embeddings(source: str) -> np.ndarray:
    """The embedding matrix a ``retrieve.topk`` op names (its ``embeddings`` attr), rows unit-norm."""
    if source.startswith("synthetic:"):
        dims, seed = source.split(":")[1], int(source.split("seed=")[1])
        rows, dim = (int(x) for x in dims.split("x"))
        m = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    else:
        m = np.load(source, allow_pickle=False).astype(np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _model_info(node: ModelNode, base: Path, where: str) -> dict[str, Any]:
    if node.onnx is not None:
        path = (base / node.onnx).resolve()
        if not path.is_file():
            raise FrontendError(f"{where} field 'onnx': file {path} does not exist")
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnx raises several unrelated types for corrupt files
            raise FrontendError(
                f"{where} field 'onnx': {path} is not an ONNX model ({e})"
            ) from None
        param_bytes = sum(
            math.prod(t.dims) * _onnx_itemsize(t.data_type) for t in proto.graph.initializer
        )
        out = _onnx_value_type(proto.graph.output[0])
        return {"source": str(path), "format": "onnx", "param_bytes": param_bytes, "output": out}
    module = _torch_module(node, base, where)
    import torch

    example = _example_tensors(node)
    with torch.no_grad():
        y = module(*example.values())
    if isinstance(y, tuple | list):
        y = y[0]
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    if node.torch:
        source = _abs_ref(node.torch, base)
    else:
        source = f"python:{type(module).__name__}@{id(module):x}"
        _BUILDER_MODULES[source] = module
    out = TensorType(tuple(int(d) for d in y.shape), str(y.dtype).removeprefix("torch."))
    return {"source": source, "format": "torch", "param_bytes": int(param_bytes), "output": out}


def _torch_module(node: ModelNode, base: Path, where: str) -> Any:
    if node.module is not None:
        module = node.module
    else:
        assert node.torch is not None
        try:
            module = resolve_callable(node.torch, base)()
        except FrontendError as e:
            raise FrontendError(f"{where} field 'torch': {e}") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise FrontendError(
            f"{where}: the torch factory returned {type(module).__name__}, not an nn.Module"
        )
    return module.eval()


def _example_tensors(node: ModelNode) -> dict[str, Any]:
    import torch

    out = {}
    for k, t in node.example_inputs.items():
        if any(d < 0 for d in t.shape):
            raise FrontendError(
                f"node {node.name!r} field 'example_inputs.{k}': shapes must be static"
            )
        dtype = getattr(torch, t.dtype)
        out[k] = torch.zeros(tuple(t.shape), dtype=dtype)
    return out


_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}
_ONNX_DTYPE = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}


def _onnx_itemsize(code: int) -> int:
    return _ONNX_ITEMSIZE.get(code, 4)


def _onnx_value_type(vi: Any) -> TensorType:
    tt = vi.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    return TensorType(shape, _ONNX_DTYPE.get(tt.elem_type, "float32"))


# ---------------------------------------------------------------------------------------------
# Python builder
# ---------------------------------------------------------------------------------------------


class AgentBuilder:
    """Build an agent graph in Python; every method returns the node's name for use as an input.

    Example:
        >>> b = AgentBuilder("qa")
        >>> q = b.input("query")
        >>> a = b.llm("answer", [q], preset="tiny-llama", max_new_tokens=16)
        >>> b.output("reply", a)
        'reply'
        >>> g = b.build()
    """

    def __init__(self, name: str = "agent", base_dir: str | Path = ".") -> None:
        self._name = name
        self._base = Path(base_dir)
        self._nodes: list[dict[str, Any]] = []
        self._edges: list[dict[str, str]] = []
        self._loops: list[dict[str, Any]] = []

    def _add(self, node: dict[str, Any], inputs: Sequence[str] = ()) -> str:
        self._nodes.append(node)
        self._edges.extend({"from": i, "to": node["name"]} for i in inputs)
        return str(node["name"])

    def input(self, name: str, shape: Sequence[int] = (-1,), dtype: str = "int32") -> str:
        return self._add({"type": "input", "name": name, "shape": list(shape), "dtype": dtype})

    def model(
        self,
        name: str,
        inputs: Sequence[str],
        *,
        onnx: str | None = None,
        torch: str | None = None,
        module: Any = None,
        example_inputs: Mapping[str, tuple[Sequence[int], str]] | None = None,
    ) -> str:
        ex = {k: {"shape": list(s), "dtype": d} for k, (s, d) in (example_inputs or {}).items()}
        node = {
            "type": "model",
            "name": name,
            "onnx": onnx,
            "torch": torch,
            "module": module,
            "example_inputs": ex,
        }
        return self._add(node, inputs)

    def llm(
        self,
        name: str,
        inputs: Sequence[str],
        *,
        preset: str | None = None,
        config: Mapping[str, Any] | None = None,
        dtype: str = "fp16",
        max_new_tokens: int = 256,
        input_tokens: int = 512,
        output_tokens: int | None = None,
    ) -> str:
        node = {
            "type": "llm",
            "name": name,
            "preset": preset,
            "config": dict(config) if config else None,
            "dtype": dtype,
            "max_new_tokens": max_new_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        return self._add(node, inputs)

    def tool(
        self,
        name: str,
        inputs: Sequence[str],
        function: str,
        *,
        latency_s: float = 0.05,
        shape: Sequence[int] = (-1,),
        dtype: str = "int32",
    ) -> str:
        node = {
            "type": "tool",
            "name": name,
            "function": function,
            "latency_s": latency_s,
            "output": {"shape": list(shape), "dtype": dtype},
        }
        return self._add(node, inputs)

    def retrieve(
        self, name: str, inputs: Sequence[str], embeddings: str | Mapping[str, int], top_k: int = 4
    ) -> str:
        emb = embeddings if isinstance(embeddings, str) else dict(embeddings)
        return self._add(
            {"type": "retrieve", "name": name, "embeddings": emb, "top_k": top_k}, inputs
        )

    def memory_load(self, name: str, key: str = "default", inputs: Sequence[str] = ()) -> str:
        return self._add({"type": "memory.load", "name": name, "key": key}, inputs)

    def memory_store(self, name: str, value: str, key: str = "default") -> str:
        return self._add({"type": "memory.store", "name": name, "key": key}, [value])

    def output(self, name: str, value: str) -> str:
        return self._add({"type": "output", "name": name}, [value])

    def node(self, type: str, name: str, inputs: Sequence[str] = (), **fields: Any) -> str:
        """A node of any registered kind (``terrazzo.frontend.kinds``) with its spec fields."""
        return self._add({"type": type, "name": name, **fields}, inputs)

    def loop(
        self,
        name: str,
        *,
        start: str,
        end: str,
        max_iterations: int,
        expected_iterations: float = 1.0,
        condition: str = "",
    ) -> None:
        """Repeat the nodes from ``start`` to ``end`` (a back edge ``end`` → ``start``)."""
        self._loops.append(
            {
                "name": name,
                "from": end,
                "to": start,
                "max_iterations": max_iterations,
                "expected_iterations": expected_iterations,
                "condition": condition,
            }
        )

    def spec(self) -> AgentSpec:
        """The validated spec (raises FrontendError naming the node and field)."""
        nodes = [{k: v for k, v in n.items() if v is not None and v != {}} for n in self._nodes]
        return parse_spec(
            {"name": self._name, "nodes": nodes, "edges": self._edges, "loops": self._loops},
            where=f"agent {self._name!r}",
        )

    def build(self) -> Graph:
        """Lower to a verified agent-level ``ir.Graph``."""
        return lower_spec(self.spec(), self._base)


# ---------------------------------------------------------------------------------------------
# Decomposition
# ---------------------------------------------------------------------------------------------


def decompose(graph: Graph, models: bool = True) -> Graph:
    """Split each ``llm.call`` into prefill, KV transfer and decode, and each ``model.call`` into operators.

    Args:
        graph: an agent-level graph from :func:`load_agent` or :class:`AgentBuilder`.
        models: also import model nodes into granular operators (needs the model frontend);
            ``False`` keeps ``model.call`` ops whole (enough for agent-level placement).

    Returns:
        A verified agent-level graph. Ops of a model node are named ``<node>.<op>``; its
        values ``<node>.<value>``; its final output keeps the node's name so consumers are
        unchanged. ``relax_mod`` maps each model node to the Relax module it came from.
        Every new op carries ``agent_node`` (the node it came from); loop attrs are kept.
    """
    if graph.level != "agent":
        raise FrontendError(f"decompose expects an agent-level graph, found level {graph.level!r}")
    values = dict(graph.values)
    ops: list[Op] = []
    mods: dict[str, Any] = {}
    for op in graph.ops:
        kind = find_kind(op.kind)
        if kind is None or kind.decompose is None:
            ops.append(op)
            continue
        sub, mod = kind.decompose(op, graph, values, models)
        ops.extend(sub)
        if mod is not None:
            mods[op.name] = mod
    out = Graph(
        name=graph.name,
        ops=tuple(ops),
        values=values,
        inputs=graph.inputs,
        outputs=graph.outputs,
        level="agent",
        attrs=make_attrs({**dict(graph.attrs), "decomposed": True}),
        relax_mod=MappingProxyType(mods) if mods else None,
    )
    return out.verify()


def _loop_attrs(op: Op) -> dict[str, Any]:
    return {k: v for k, v in op.attrs if k.startswith("loop")}


def _split_llm(op: Op, values: dict[str, TensorType]) -> list[Op]:
    a = op.attr_dict
    arch = llm_arch_of(op)
    dtype = str(a["dtype"])
    isl, osl = _int_attr(a["input_tokens"]), _int_attr(a["output_tokens"])
    wbytes = op.param_bytes
    common = {k: v for k, v in a.items()}
    common["agent_node"] = op.name
    kv = f"{op.name}.kv"
    kv_remote = f"{op.name}.kv_remote"
    kv_type = TensorType((arch.layers, 2, arch.kv_heads, isl, arch.head_dim), _LLM_DTYPE[dtype])
    values[kv] = kv_type
    values[kv_remote] = kv_type
    kv_bytes = kv_type.nbytes
    assert kv_bytes == kv_bytes_per_token(arch, dtype) * isl
    n = arch.params
    prefill = Op(
        name=f"{op.name}.prefill",
        kind="llm.prefill",
        inputs=op.inputs,
        outputs=(kv,),
        attrs=make_attrs(common),
        op_class="llm_prefill",
        flops=2 * n * isl,
        bytes_read=op.bytes_read + wbytes,
        bytes_written=kv_bytes,
        param_bytes=wbytes,
    )
    transfer = Op(
        name=f"{op.name}.kv_transfer",
        kind="llm.kv_transfer",
        inputs=(kv,),
        outputs=(kv_remote,),
        attrs=make_attrs({"agent_node": op.name, **_loop_attrs(op)}),
        op_class="kv_transfer",
        bytes_read=kv_bytes,
        bytes_written=kv_bytes,
    )
    # Decode reads all weights once per generated token plus the growing KV cache.
    kv_read = sum(kv_bytes_per_token(arch, dtype) * (isl + t) for t in range(osl))
    decode = Op(
        name=f"{op.name}.decode",
        kind="llm.decode",
        inputs=(kv_remote,),
        outputs=(op.name,),
        attrs=make_attrs(common),
        op_class="llm_decode",
        flops=2 * n * osl,
        bytes_read=wbytes * osl + kv_read,
        bytes_written=values[op.name].nbytes,
        param_bytes=wbytes,
    )
    return [prefill, transfer, decode]


def _split_model(op: Op, graph: Graph, values: dict[str, TensorType]) -> tuple[list[Op], Any]:
    from dataclasses import replace

    sub = _import_model(op, graph)
    prefix = f"{op.name}."
    rename: dict[str, str] = {}
    if len(sub.inputs) != len(op.inputs):
        raise FrontendError(
            f"node {op.name!r}: the model takes {len(sub.inputs)} inputs ({', '.join(sub.inputs)}) "
            f"but the agent feeds it {len(op.inputs)} ({', '.join(op.inputs)})"
        )
    rename.update(zip(sub.inputs, op.inputs, strict=True))
    rename[sub.outputs[0]] = op.name
    for v, t in sub.values.items():
        if v not in rename:
            rename[v] = prefix + v
            values[prefix + v] = t
    values[op.name] = sub.values[sub.outputs[0]]
    loop = _loop_attrs(op)
    out = []
    for o in sub.ops:
        attrs = dict(o.attrs)
        attrs.update(loop)
        attrs["agent_node"] = op.name
        out.append(
            replace(
                o,
                name=prefix + o.name,
                inputs=tuple(rename.get(v, v) for v in o.inputs),
                outputs=tuple(rename.get(v, v) for v in o.outputs),
                attrs=make_attrs(attrs),
            )
        )
    return out, sub.relax_mod


def _import_model(op: Op, graph: Graph) -> Graph:
    """Import the model behind a ``model.call`` op with the frontend (granular operators)."""
    from terrazzo import frontend

    a = op.attr_dict
    src = str(a["source"])
    if a["format"] == "onnx":
        return frontend.from_onnx(src)  # type: ignore[attr-defined,no-any-return]
    ex = cast(
        "tuple[tuple[str, tuple[int, ...], str], ...]", a.get("example_inputs", ())
    )  # (name, shape, dtype)
    import torch

    module = _BUILDER_MODULES[src] if src in _BUILDER_MODULES else resolve_callable(src)()
    example = tuple(torch.zeros(tuple(shape), dtype=getattr(torch, dt)) for _, shape, dt in ex)
    return frontend.from_torch(module.eval(), example)  # type: ignore[attr-defined,no-any-return]


__all__ = [
    "AgentBuilder",
    "AgentSpec",
    "EdgeSpec",
    "llm_config_from_hf",
    "kv_bytes_per_token",
    "TensorSpec",
    "decompose",
    "llm_arch_of",
    "load_agent",
    "load_embeddings",
    "lower_spec",
    "parse_spec",
    "resolve_callable",
]
