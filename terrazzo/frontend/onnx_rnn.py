"""ONNX LSTM, GRU and RNN converters (TVM 0.27's ONNX importer has none).

Each converter unrolls the time loop over the static sequence length into Relax ops
(one ``matmul`` for the input projection of all steps, then per step a ``matmul`` with the
recurrent weights, gate slices, activations), so the result builds on every target the
project has. Semantics follow the ONNX operator spec (opsets 7/14/22):

* ``direction`` forward, reverse and bidirectional; ``layout`` 0 and 1; ``initial_h`` /
  ``initial_c`` optional (zeros); ``B`` optional (zeros); LSTM peepholes ``P``; ``clip``;
  GRU ``linear_before_reset`` 0 and 1; activations ``Sigmoid``, ``Tanh``, ``Relu`` (the
  defaults are Sigmoid/Tanh/Tanh for LSTM, Sigmoid/Tanh for GRU, Tanh for RNN).
* ``sequence_lens`` (ragged batches): rows shorter than step ``t`` keep their state and
  output zeros there, as the spec says; dropped when it is a constant equal to the length.
* Refused with one line naming the attribute: LSTM ``input_forget=1``, other activation functions or ``activation_alpha``/``beta``.

``register()`` adds them to TVM's converter table (``_get_convert_map``), the one place
both ``check_supported_ops`` and TVM's importer read.
"""

from __future__ import annotations

from typing import Any

from terrazzo.errors import FrontendError

_ACTS = {"sigmoid", "tanh", "relu"}


def _static_shape(x: Any, what: str) -> list[int]:
    try:
        return [int(d) for d in x.ty.shape.values]
    except (AttributeError, TypeError, ValueError):
        raise FrontendError(f"{what} needs a static shape; fix it with --shape") from None


def _x_shape(x: Any, op: str, layout: int) -> list[Any]:
    """X's dims: the sequence length must be static (the time loop is unrolled), the batch
    may be a symbol (one build serves every batch size in its range)."""
    try:
        dims = list(x.ty.shape.values)
    except (AttributeError, TypeError):
        raise FrontendError(f"ONNX {op} input X needs a known rank") from None
    seq_axis = 1 if layout == 1 else 0
    out: list[Any] = []
    for k, d in enumerate(dims):
        try:
            out.append(int(d))
        except (TypeError, ValueError):
            if k != 1 - seq_axis:
                raise FrontendError(
                    f"ONNX {op}: the sequence length of input X must be static (the time loop "
                    f"is unrolled); it is {d}: fix it with shapes= / --shape, the batch may "
                    "stay symbolic"
                ) from None
            out.append(d)
    return out


def _as_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _activations(op: str, attr: dict[str, Any], defaults: list[str], num_dir: int) -> list[str]:
    for key in ("activation_alpha", "activation_beta"):
        if attr.get(key):
            raise FrontendError(f"ONNX {op}: attribute {key!r} is not supported")
    acts = [_as_str(a).lower() for a in attr.get("activations", [])] or defaults * num_dir
    if len(acts) == len(defaults) and num_dir == 2:
        acts = acts * 2
    if len(acts) != len(defaults) * num_dir:
        raise FrontendError(
            f"ONNX {op}: attribute 'activations' has {len(acts)} entries, expected "
            f"{len(defaults) * num_dir}"
        )
    given = [_as_str(a) for a in attr.get("activations", [])]
    bad = sorted({a for a in given if a.lower() not in _ACTS})
    if bad:
        raise FrontendError(
            f"ONNX {op}: attribute 'activations' uses {', '.join(bad)}; supported: "
            "Sigmoid, Tanh, Relu"
        )
    return acts


def _act(name: str, x: Any) -> Any:
    from tvm import relax

    return {"sigmoid": relax.op.sigmoid, "tanh": relax.op.tanh, "relu": relax.op.nn.relu}[name](x)


def _seq_mask(bb: Any, seq_lens: Any, seq: int, batch: int) -> Any:
    """``sequence_lens`` as an int64 ``[batch, 1]`` tensor, or None when every row is full."""
    import numpy as np
    import tvm
    from tvm import relax

    if seq_lens is None:
        return None
    if isinstance(seq_lens, tvm.ir.GenericConst):
        vals = np.asarray(seq_lens.value.numpy()).reshape(-1)
        if np.all(vals == seq):
            return None
    lens = relax.op.astype(seq_lens, "int64")
    return bb.emit(relax.op.reshape(lens, [batch, 1]))


class _Recurrent:
    """Shared unrolling: subclasses give the gate count and one step."""

    op = ""
    gates = 1
    default_acts: list[str] = []

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        return cls._convert

    @classmethod
    def _step(
        cls,
        bb: Any,
        xw: Any,
        h: Any,
        c: Any,
        r_t: Any,
        rb: Any,
        p: Any,
        acts: list[str],
        attr: dict[str, Any],
        hidden: int,
    ) -> tuple[Any, Any]:
        raise NotImplementedError

    @classmethod
    def _convert(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        op, g = cls.op, cls.gates
        inputs = list(inputs) + [None] * (8 - len(inputs))
        x, w, r, b, seq_lens, h0 = inputs[:6]
        c0 = inputs[6] if op == "LSTM" else None
        peep = inputs[7] if op == "LSTM" else None
        if op == "LSTM" and int(attr.get("input_forget", 0)):
            raise FrontendError("ONNX LSTM: attribute 'input_forget'=1 is not supported")
        direction = _as_str(attr.get("direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise FrontendError(f"ONNX {op}: attribute 'direction' {direction!r} is not valid")
        num_dir = 2 if direction == "bidirectional" else 1
        layout = int(attr.get("layout", 0))
        dtype = str(x.ty.dtype)
        xs = _x_shape(x, op, layout)
        if layout == 1:
            x = bb.emit(relax.op.permute_dims(x, [1, 0, 2]))
            xs = [xs[1], xs[0], xs[2]]
            if h0 is not None:
                h0 = bb.emit(relax.op.permute_dims(h0, [1, 0, 2]))
            if c0 is not None:
                c0 = bb.emit(relax.op.permute_dims(c0, [1, 0, 2]))
        seq, batch, _ = xs
        hidden = int(attr.get("hidden_size", _static_shape(r, f"ONNX {op} input R")[-1]))
        lens = _seq_mask(bb, seq_lens, seq, batch)
        acts = _activations(op, attr, cls.default_acts, num_dir)
        clip = attr.get("clip")
        k = len(cls.default_acts)

        zeros = relax.op.zeros(relax.ShapeExpr([batch, hidden]), dtype)
        ys, hs, cs = [], [], []
        for d in range(num_dir):
            reverse = direction == "reverse" or d == 1
            idx = relax.const(d, "int64")
            w_t = bb.emit(relax.op.permute_dims(relax.op.take(w, idx, axis=0), [1, 0]))
            r_t = bb.emit(relax.op.permute_dims(relax.op.take(r, idx, axis=0), [1, 0]))
            xw = bb.emit(relax.op.matmul(x, w_t))  # [seq, batch, g*hidden]
            wb = rb = None
            if b is not None:
                bd = bb.emit(relax.op.take(b, idx, axis=0))
                wb = relax.op.strided_slice(bd, axes=[0], begin=[0], end=[g * hidden])
                rb = bb.emit(
                    relax.op.strided_slice(bd, axes=[0], begin=[g * hidden], end=[2 * g * hidden])
                )
                xw = bb.emit(relax.op.add(xw, wb))
            p = bb.emit(relax.op.take(peep, idx, axis=0)) if peep is not None else None
            h = bb.emit(relax.op.take(h0, idx, axis=0)) if h0 is not None else bb.emit(zeros)
            c = None
            if op == "LSTM":
                c = bb.emit(relax.op.take(c0, idx, axis=0)) if c0 is not None else bb.emit(zeros)
            steps = range(seq - 1, -1, -1) if reverse else range(seq)
            outs: list[Any] = [None] * seq
            for t in steps:
                xt = bb.emit(relax.op.take(xw, relax.const(t, "int64"), axis=0))
                h_new, c_new = cls._step(
                    bb,
                    xt,
                    h,
                    c,
                    r_t,
                    rb,
                    p,
                    acts[d * k : (d + 1) * k],
                    {"clip": clip, **attr},
                    hidden,
                )
                if lens is None:
                    h, c, outs[t] = h_new, c_new, h_new
                else:  # rows shorter than t+1 keep their state and output zeros
                    live = bb.emit(relax.op.less(relax.const(t, "int64"), lens))
                    h = bb.emit(relax.op.where(live, h_new, h))
                    if c is not None:
                        c = bb.emit(relax.op.where(live, c_new, c))
                    outs[t] = bb.emit(relax.op.where(live, h_new, zeros))
            ys.append(bb.emit(relax.op.stack(outs, axis=0)))  # [seq, batch, hidden]
            hs.append(h)
            cs.append(c)
        y = bb.emit(relax.op.stack(ys, axis=1))  # [seq, num_dir, batch, hidden]
        y_h = bb.emit(relax.op.stack(hs, axis=0))  # [num_dir, batch, hidden]
        y_c = bb.emit(relax.op.stack(cs, axis=0)) if op == "LSTM" else None
        if layout == 1:
            y = bb.emit(relax.op.permute_dims(y, [2, 0, 1, 3]))
            y_h = bb.emit(relax.op.permute_dims(y_h, [1, 0, 2]))
            if y_c is not None:
                y_c = bb.emit(relax.op.permute_dims(y_c, [1, 0, 2]))
        return relax.Tuple([y, y_h] + ([y_c] if y_c is not None else []))


def _gate(x: Any, i: int, hidden: int) -> Any:
    from tvm import relax

    return relax.op.strided_slice(x, axes=[1], begin=[i * hidden], end=[(i + 1) * hidden])


def _clip(x: Any, clip: Any) -> Any:
    from tvm import relax

    if clip is None:
        return x
    return relax.op.clip(x, -float(clip), float(clip))


class LSTM(_Recurrent):
    """ONNX LSTM: gates i, o, f, c in W/R/B; peepholes P = [Pi, Po, Pf]."""

    op = "LSTM"
    gates = 4
    default_acts = ["sigmoid", "tanh", "tanh"]

    @classmethod
    def _step(cls, bb, xw, h, c, r_t, rb, p, acts, attr, hidden):  # type: ignore[no-untyped-def]
        from tvm import relax

        f_act, g_act, h_act = acts
        clip = attr.get("clip")
        z = relax.op.add(xw, relax.op.matmul(h, r_t))
        if rb is not None:
            z = relax.op.add(z, rb)
        z = bb.emit(z)
        zi, zo, zf, zc = (_gate(z, i, hidden) for i in range(4))
        if p is not None:
            pi, po, pf = (
                relax.op.strided_slice(p, [0], [i * hidden], [(i + 1) * hidden]) for i in range(3)
            )
            zi = relax.op.add(zi, relax.op.multiply(pi, c))
            zf = relax.op.add(zf, relax.op.multiply(pf, c))
        i_t = _act(f_act, _clip(zi, clip))
        f_t = _act(f_act, _clip(zf, clip))
        c_tilde = _act(g_act, _clip(zc, clip))
        c_new = bb.emit(relax.op.add(relax.op.multiply(f_t, c), relax.op.multiply(i_t, c_tilde)))
        if p is not None:
            zo = relax.op.add(zo, relax.op.multiply(po, c_new))
        o_t = _act(f_act, _clip(zo, clip))
        h_new = bb.emit(relax.op.multiply(o_t, _act(h_act, c_new)))
        return h_new, c_new


class GRU(_Recurrent):
    """ONNX GRU: gates z, r, h in W/R/B; ``linear_before_reset`` 0 or 1."""

    op = "GRU"
    gates = 3
    default_acts = ["sigmoid", "tanh"]

    @classmethod
    def _step(cls, bb, xw, h, c, r_t, rb, p, acts, attr, hidden):  # type: ignore[no-untyped-def]
        from tvm import relax

        f_act, g_act = acts
        clip = attr.get("clip")
        lbr = int(attr.get("linear_before_reset", 0))
        xz, xr, xh = (_gate(xw, i, hidden) for i in range(3))
        rzr = relax.op.strided_slice(r_t, axes=[1], begin=[0], end=[2 * hidden])
        rh = relax.op.strided_slice(r_t, axes=[1], begin=[2 * hidden], end=[3 * hidden])
        hzr = relax.op.matmul(h, rzr)
        if rb is not None:
            hzr = relax.op.add(hzr, relax.op.strided_slice(rb, [0], [0], [2 * hidden]))
        hzr = bb.emit(hzr)
        z_t = bb.emit(_act(f_act, _clip(relax.op.add(xz, _gate(hzr, 0, hidden)), clip)))
        r_g = bb.emit(_act(f_act, _clip(relax.op.add(xr, _gate(hzr, 1, hidden)), clip)))
        rbh = (
            relax.op.strided_slice(rb, [0], [2 * hidden], [3 * hidden]) if rb is not None else None
        )
        if lbr:
            hh = relax.op.matmul(h, rh)
            if rbh is not None:
                hh = relax.op.add(hh, rbh)
            pre = relax.op.add(xh, relax.op.multiply(r_g, hh))
        else:
            hh = relax.op.matmul(relax.op.multiply(r_g, h), rh)
            if rbh is not None:
                hh = relax.op.add(hh, rbh)
            pre = relax.op.add(xh, hh)
        h_tilde = bb.emit(_act(g_act, _clip(pre, clip)))
        one = relax.const(1.0, str(h.ty.dtype))
        h_new = bb.emit(
            relax.op.add(
                relax.op.multiply(relax.op.subtract(one, z_t), h_tilde), relax.op.multiply(z_t, h)
            )
        )
        return h_new, None


class RNN(_Recurrent):
    """ONNX RNN: ``H = f(X W^T + H R^T + Wb + Rb)``."""

    op = "RNN"
    gates = 1
    default_acts = ["tanh"]

    @classmethod
    def _step(cls, bb, xw, h, c, r_t, rb, p, acts, attr, hidden):  # type: ignore[no-untyped-def]
        from tvm import relax

        z = relax.op.add(xw, relax.op.matmul(h, r_t))
        if rb is not None:
            z = relax.op.add(z, rb)
        return bb.emit(_act(acts[0], _clip(z, attr.get("clip")))), None


CONVERTERS: dict[str, Any] = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}


def register() -> None:
    """Add the converters to TVM's ONNX converter table (idempotent)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    current = onnx_frontend._get_convert_map
    if getattr(current, "_terrazzo_rnn", False):
        return

    def with_rnn() -> dict[str, Any]:
        table = dict(current())
        table.update(CONVERTERS)
        return table

    with_rnn._terrazzo_rnn = True  # type: ignore[attr-defined]
    onnx_frontend._get_convert_map = with_rnn
