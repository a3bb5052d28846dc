"""PyTorch frontend: nn.Module → torch.export → Relax (``from_exported_program``) → ir.Graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from terrazzo.errors import FrontendError
from terrazzo.frontend.relax_graph import to_graph, uniquify_names
from terrazzo.frontend.signature import keep_signature_names, torch_output_names
from terrazzo.ir import Graph


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
        mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.Normalize()(mod)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise FrontendError(f"TVM's torch importer failed on {gname}: {first[:300]}") from None
    mod = uniquify_names(mod)
    in_names = [p.name for p in mod["main"].params]  # forward()'s argument names
    mod = keep_signature_names(mod, in_names, torch_output_names(ep.call_spec.out_spec))
    return to_graph(mod, name=gname, attrs={"source": "torch"})
