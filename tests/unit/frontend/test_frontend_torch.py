"""torch.export frontend, name uniquing, and the build fix-ups (with their regression test)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import build_and_run, from_torch, prepare_for_build, relax_bindings  # noqa: E402
from terrazzo.frontend.relax_graph import to_graph, uniquify_names  # noqa: E402


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.split(self.fc(x), 2, dim=1)
        return torch.relu(a), b * 2.0


def test_from_torch_graph_and_numerics() -> None:
    torch.manual_seed(0)
    m = _TwoHeads()
    x = torch.randn(3, 6)
    g = from_torch(m, (x,))
    assert g.inputs == ("x",) and len(g.outputs) == 2
    assert list(g.op_names) == [n for n, _ in relax_bindings(g.relax_mod)]
    mm = [o for o in g.ops if o.kind == "matmul"]
    assert len(mm) == 1 and mm[0].flops == 2 * 3 * 4 * 6
    assert g.param_bytes >= (6 * 4 + 4) * 4
    got = list(build_and_run(g, {"x": x.numpy()}).values())
    ref = [t.detach().numpy() for t in m(x)]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_from_torch_export_failure_is_frontend_error() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0] if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(FrontendError, match="torch.export failed"):
        from_torch(DataDependent(), (torch.randn(4),))


class _BoolCumsum(torch.nn.Module):
    """The pattern transformers' causal-mask code uses (packed-sequence detection)."""

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        flags = pos.diff(dim=-1, prepend=pos[:, :1] - 1) != 1
        return torch.cumsum(flags, dim=-1)


def test_bool_cumsum_needs_fixup_and_matches_torch() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 5, 6, 7]])
    g = from_torch(_BoolCumsum(), (pos,))
    assert any(o.kind == "cumsum" for o in g.ops)
    # Regression: TVM 0.27 aborts in LLVM CreateAdd on a bool scan without the fix-up.
    with pytest.raises(Exception, match="kDLFloat"):
        tvm.compile(g.relax_mod, target=tvm.target.Target({"kind": "llvm"}))
    fixed = prepare_for_build(g.relax_mod)
    text = fixed.script()
    assert "R.cumsum(" in text and 'dtype="int64"' in text
    (got,) = build_and_run(g, {"pos": pos.numpy()}).values()
    ref = _BoolCumsum()(pos).numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)


def test_uniquify_names_renames_duplicates() -> None:
    from tvm import relax

    x = relax.Var("x", relax.TensorType((2, 2), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, x), name_hint="t")
            b = bb.emit(relax.op.multiply(a, a), name_hint="t")
            c = bb.emit_output(relax.op.negative(b), name_hint="x")
        bb.emit_func_output(c)
    mod = uniquify_names(bb.get())
    names = [n for n, _ in relax_bindings(mod)]
    assert len(set(names)) == 3 and "x" not in names
    g = to_graph(mod, "dup")
    (got,) = build_and_run(g, {"x": np.ones((2, 2), np.float32)}).values()
    np.testing.assert_array_equal(got, -np.full((2, 2), 4.0, np.float32))


def _cache_update_module(k_len: int):
    """``cache * keep + w @ k``: an LLM decode's static-cache write (contracted dim ``k_len``)."""
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    shapes = {"c": (2, 48, 16), "keep": (1, 48, 1), "w": (2, 48, k_len), "k": (2, k_len, 16)}
    params = {n: relax.Var(n, R.Tensor(s, "float32")) for n, s in shapes.items()}
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            p = params
            y = bb.emit(
                relax.op.add(relax.op.multiply(p["c"], p["keep"]), relax.op.matmul(p["w"], p["k"]))
            )
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), list(shapes.values())


@pytest.mark.parametrize("k_len", [1, 2])
def test_outer_product_matmul_becomes_multiply(k_len):
    """A matmul contracting a dimension of 1 is rewritten to the broadcast multiply it equals
    (dlight miscompiled the fused form on an H200); other matmuls are left alone."""
    import numpy as np
    import tvm
    from tvm import relax

    from terrazzo.frontend import prepare_for_build

    mod, shapes = _cache_update_module(k_len)
    new = prepare_for_build(mod)
    assert ("R.matmul" in new.script()) == (k_len != 1)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in shapes]
    vm = relax.VirtualMachine(tvm.compile(new, target="llvm"), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()
    ref = args[0] * args[1] + args[2] @ args[3]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
