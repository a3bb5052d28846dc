"""PyTorch frontend: nn.Module → torch.export → Relax (``from_exported_program``) → ir.Graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from terrazzo.errors import FrontendError
from terrazzo.frontend.relax_graph import to_graph, uniquify_names
from terrazzo.frontend.signature import keep_signature_names, torch_output_names
from terrazzo.ir import Graph


def _select_int(node: Any, importer: Any) -> Any:
    """``aten.select.int`` (``x[:, -1]``) with its index made non-negative.

    TVM 0.27's translator emits ``take(x, index, dim)`` with the index as written; ``take``'s
    default mode does no bounds handling, so ``-1`` reads memory before the tensor: outputs
    off by 1e33 that change from run to run (an LSTM followed by ``y[:, -1]`` showed it).
    Torch wraps a negative index once and rejects anything outside ``[-n, n)``.
    """
    from tvm import relax

    x = importer.env[node.args[0]]
    dim, index = int(node.args[1]), int(node.args[2])
    shape = node.args[0].meta["val"].shape
    size = shape[dim]
    if isinstance(size, int):
        n = int(size)
        if not -n <= index < n:
            raise FrontendError(
                f"select index {index} is out of range for dimension {dim} of size {n}"
            )
        return importer.block_builder.emit(relax.op.take(x, relax.const(index % n, "int64"), dim))
    # A symbolic size: let take wrap the (in-range, torch has checked) index.
    return importer.block_builder.emit(
        relax.op.take(x, relax.const(index, "int64"), dim, mode="wrap")
    )


def from_torch(module: Any, example_inputs: Sequence[Any], name: str | None = None) -> Graph:
    """Import a PyTorch module as an ir.Graph, with static shapes taken from ``example_inputs``.

    Args:
        module: a ``torch.nn.Module`` (put in eval mode here).
        example_inputs: positional example tensors; their shapes become the graph's shapes.
        name: graph name (default: the module's class name).

    Returns:
        A verified model graph; input names are the forward() argument names, output names
        the keys of what it returns (``output_0``, ... by position; see
        ``frontend.signature.torch_output_names``).

    Raises:
        FrontendError: torch.export or the TVM importer failed.
    """
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    module = module.eval()
    args = tuple(example_inputs)
    gname = name or type(module).__name__
    try:
        with torch.no_grad():
            ep = torch.export.export(module, args)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"torch.export failed on {gname}: {first[:300]}") from None
    try:
        mod = from_exported_program(
            ep,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=True,
            custom_convert_map={"select.int": _select_int},
        )
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.Normalize()(mod)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise FrontendError(f"TVM's torch importer failed on {gname}: {first[:300]}") from None
    mod = uniquify_names(mod)
    in_names = [p.name for p in mod["main"].params]  # forward()'s argument names
    mod = keep_signature_names(mod, in_names, torch_output_names(ep.call_spec.out_spec))
    return to_graph(mod, name=gname, attrs={"source": "torch"})
