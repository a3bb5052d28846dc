"""Whole-graph reference execution: build a graph's Relax module for the CPU and run it on the Relax VM.

Other layers use this as the numerical reference for a whole model (codegen checks its
stages against it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from terrazzo.errors import CodegenError, FrontendError
from terrazzo.frontend.fixups import prepare_for_build
from terrazzo.frontend.ieee import NanPropagatingMinMax
from terrazzo.frontend.onnx_guards import (
    GUARD_CACHE_SIZE,
    GuardedGraph,
    describe_values,
    guard_key,
)
from terrazzo.frontend.onnx_import import sanitize_name
from terrazzo.ir import Graph


def build_cpu(
    graph: Graph | GuardedGraph,
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """Compile ``graph.relax_mod`` for the local CPU (``llvm``) after ``prepare_for_build``.

    Args:
        graph: a model graph from ``from_onnx``/``from_torch``; or a ``GuardedGraph``
            (``from_onnx(guards=True)``): then each call builds, or reuses, the
            specialisation on the guard inputs' values (see :class:`GuardedRunner`).

    Returns:
        A function from ``{input name: array}`` to ``{output name: array}``.

    Raises:
        CodegenError: TVM failed to build the module.
    """
    import tvm
    from tvm import relax

    if isinstance(graph, GuardedGraph):
        return GuardedRunner(graph)
    if graph.relax_mod is None:
        raise FrontendError(f"graph {graph.name!r} has no Relax module (not from a frontend)")
    try:
        mod = prepare_for_build(graph.relax_mod)
        # Legalize first so that float min/max propagate NaN (see frontend.ieee).
        mod = NanPropagatingMinMax()(relax.transform.LegalizeOps()(mod))
        ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise CodegenError(f"TVM build of {graph.name!r} for llvm failed: {first[:300]}") from None
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    accepts = _input_checks(graph)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The graph keeps the model's input names; TVM's sanitised spellings are accepted too.
        named = dict(inputs)
        for n in graph.inputs:
            if n not in named and sanitize_name(n) in inputs:
                named[n] = inputs[sanitize_name(n)]
        missing = [n for n in graph.inputs if n not in named]
        if missing:
            raise FrontendError(
                f"missing inputs {missing}; graph {graph.name!r} needs {list(graph.inputs)}"
            )
        args = []
        for n in graph.inputs:
            want = graph.values[n]
            arr = np.asarray(named[n], dtype=want.dtype, order="C")
            accepts[n](arr.shape)
            args.append(tvm.runtime.tensor(arr, dev))
        result = vm["main"](*args)
        leaves = list(_leaves(result))
        if len(leaves) != len(graph.outputs):
            raise CodegenError(
                f"{graph.name!r} returned {len(leaves)} tensors, graph lists {len(graph.outputs)} outputs"
            )
        return dict(zip(graph.outputs, leaves, strict=True))

    return run


class GuardedRunner:
    """Runs a GuardedGraph: per call, the build specialised on the guard inputs' values.

    Builds are kept in an LRU cache of ``cache_size`` keyed by the exact values
    (``onnx_guards.guard_key``: dtype, shape and bytes), so a build is only reused for the
    very value it was made for. ``builds`` lists the values built so far, oldest first;
    ``last_key`` is the key of the build the last call ran.
    """

    def __init__(self, graph: GuardedGraph, cache_size: int = GUARD_CACHE_SIZE) -> None:
        self.graph = graph
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Any, tuple[Graph, Callable[..., dict[str, np.ndarray]]]] = (
            OrderedDict()
        )
        self.built = 0
        self.last_key: Any = None

    @property
    def builds(self) -> list[str]:
        return [", ".join(f"{n}={_shown(b, d, s)}" for n, d, s, b in k) for k in self._cache]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.graph.guard_values(inputs)
        key = guard_key(values)
        entry = self._cache.get(key)
        if entry is None:
            spec = self.graph.specialise(values)
            try:
                fn = build_cpu(spec)
            except CodegenError as e:
                raise CodegenError(f"specialisation on {describe_values(values)}: {e}") from None
            entry = (spec, fn)
            self._cache[key] = entry
            self.built += 1
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        self.last_key = key
        spec, fn = entry
        guards = set(self.graph.guard_names) | {sanitize_name(n) for n in self.graph.guard_names}
        rest = {k: v for k, v in inputs.items() if k not in guards}
        return fn(rest)


def _shown(raw: bytes, dtype: str, shape: tuple[int, ...]) -> str:
    return str(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).tolist())


def _input_checks(graph: Graph) -> dict[str, Callable[[tuple[int, ...]], None]]:
    """Per input, a check of a run-time shape: fixed dimensions must match, symbolic ones
    (a graph from a dynamic-axes model) must lie inside their declared range, since memory is
    planned at the upper bound."""
    main = graph.relax_mod["main"]  # type: ignore[index]
    attrs = main.attrs or {}
    lo = {str(k): int(v) for k, v in dict(attrs.get("tir_var_lower_bound", {})).items()}
    hi = {str(k): int(v) for k, v in dict(attrs.get("tir_var_upper_bound", {})).items()}
    checks: dict[str, Callable[[tuple[int, ...]], None]] = {}
    for name, param in zip(graph.inputs, main.params, strict=False):
        want = graph.values[name].shape
        try:
            dims = list(param.ty.shape.values)
        except (AttributeError, TypeError):
            dims = list(want)

        def check(shape: tuple[int, ...], name: str = name, dims: list[Any] = dims,
                  want: tuple[int, ...] = want) -> None:  # fmt: skip
            bad = len(shape) != len(dims)
            ranges = []
            for d, got in zip(dims, shape, strict=False):
                key = str(d)
                if key in hi:
                    ranges.append(f"{key}={lo.get(key, 1)}..{hi[key]}")
                    bad = bad or not lo.get(key, 1) <= got <= hi[key]
                elif isinstance(d, int) or type(d).__name__ == "IntImm":
                    bad = bad or int(d) != got
            if bad:
                declared = f" (declared {', '.join(ranges)})" if ranges else ""
                raise FrontendError(
                    f"input {name!r} has shape {tuple(shape)}, expected {want}{declared}"
                )

        checks[name] = check
    return checks


def _leaves(x: Any) -> Any:
    if hasattr(x, "numpy"):
        yield x.numpy()
    else:
        for item in x:
            yield from _leaves(item)


def build_and_run(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Build the whole graph for the CPU and run it once.

    Args:
        graph: a model graph from a frontend.
        inputs: arrays by input name (ONNX names or their Relax-sanitised forms).

    Returns:
        Arrays by graph output name.
    """
    return build_cpu(graph)(inputs)
