"""Per-operator analysis rules (cost-model class and FLOPs) used when the frontend builds an ir.Graph.

Rules are data: a table from the Relax op kind (``matmul``, ``nn.conv2d``, ...) to its
op class and a FLOP formula. Byte counts are computed uniformly by the caller from the
tensor sizes an op reads and writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from terrazzo.ir import TensorType

# FLOP formula: (input tensor types (vars and constants, in argument order), output leaf types) → int
FlopFn = Callable[[Sequence[TensorType], Sequence[TensorType]], int]


@dataclass(frozen=True, slots=True)
class OpRule:
    """How to classify and count one op kind."""

    op_class: str
    flops: FlopFn


def _numel_out(k: int = 1) -> FlopFn:
    return lambda ins, outs: k * sum(t.numel for t in outs)


def _numel_in(k: int = 1) -> FlopFn:
    return lambda ins, outs: k * (ins[0].numel if ins else 0)


def _zero(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    return 0


def _matmul(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    # 2·M·N·K: every output element is a K-long dot product (batch dims included in numel).
    if not ins or not outs or not ins[0].shape:
        return 0
    return 2 * outs[0].numel * ins[0].shape[-1]


def _conv(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    # 2·N·Cout·Hout·Wout · (Cin/groups)·kh·kw; the weight is [Cout, Cin/groups, kh, kw].
    if len(ins) < 2 or not outs:
        return 0
    return 2 * outs[0].numel * math.prod(ins[1].shape[1:])


def _conv_transpose(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    # Each input element scatters into Cout/groups·kh·kw outputs; weight is [Cin, Cout/groups, kh, kw].
    if len(ins) < 2:
        return 0
    return 2 * ins[0].numel * math.prod(ins[1].shape[1:])


def _attention(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    # q [B, S, H, D], k [B, T, H, D]: QK^T and PV are 2·B·H·S·T·D each, plus softmax over S·T.
    if len(ins) < 2 or len(ins[0].shape) != 4 or len(ins[1].shape) != 4:
        return 0
    b, s, h, d = ins[0].shape
    t = ins[1].shape[1]
    return 4 * b * h * s * t * d + 5 * b * h * s * t


def _pool(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    # Without the window in the types, approximate by input elements (each read once per window).
    return ins[0].numel if ins else 0


_ELEMENTWISE_UNARY_CHEAP = (
    "abs negative relu nn.relu nn.leakyrelu nn.prelu floor ceil round sign clip astype "
    "logical_not bitwise_not square isnan isinf isfinite trunc nn.relu6"
).split()
_ELEMENTWISE_UNARY_TRANSCENDENTAL = (
    "exp log sqrt rsqrt sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh "
    "sigmoid nn.silu nn.gelu nn.gelu_tanh erf nn.softplus nn.selu nn.elu power log1p expm1"
).split()
_ELEMENTWISE_BINARY = (
    "add subtract multiply divide floor_divide floor_mod mod maximum minimum equal not_equal "
    "less less_equal greater greater_equal logical_and logical_or logical_xor bitwise_and "
    "bitwise_or bitwise_xor left_shift right_shift where atan2 trunc_divide"
).split()
_REDUCTIONS = (
    "sum mean max min prod variance std argmax argmin cumsum cumprod all any nn.log_softmax_grad"
).split()
_NORMS = "nn.layer_norm nn.rms_norm nn.batch_norm nn.group_norm nn.instance_norm".split()
_DATA_MOVEMENT = (
    "reshape permute_dims concat split take strided_slice dynamic_strided_slice broadcast_to "
    "expand_dims squeeze flatten flip tile repeat gather_elements gather_nd scatter_elements "
    "scatter_nd index_tensor index_put layout_transform full full_like zeros zeros_like ones "
    "ones_like arange tril triu one_hot collapse_sum_to collapse_sum_like nn.pad reverse_sequence "
    "topk sort argsort unique nonzero shape_of tensor_to_shape shape_to_tensor image.resize2d "
    "image.resize3d nn.space_to_depth nn.depth_to_space meshgrid hint_on_device to_vdevice "
    "tuple tuple_get_item const alias shape match_cast call_tir call_dps_packed"
).split()

RULES: dict[str, OpRule] = {
    "matmul": OpRule("matmul", _matmul),
    "linear": OpRule("matmul", _matmul),
    "nn.conv1d": OpRule("conv", _conv),
    "nn.conv2d": OpRule("conv", _conv),
    "nn.conv3d": OpRule("conv", _conv),
    "nn.conv1d_transpose": OpRule("conv", _conv_transpose),
    "nn.conv2d_transpose": OpRule("conv", _conv_transpose),
    "nn.attention": OpRule("matmul", _attention),
    "nn.softmax": OpRule("softmax", _numel_out(5)),
    "nn.log_softmax": OpRule("softmax", _numel_out(6)),
    "nn.max_pool1d": OpRule("reduction", _pool),
    "nn.max_pool2d": OpRule("reduction", _pool),
    "nn.max_pool3d": OpRule("reduction", _pool),
    "nn.avg_pool1d": OpRule("reduction", _pool),
    "nn.avg_pool2d": OpRule("reduction", _pool),
    "nn.avg_pool3d": OpRule("reduction", _pool),
    "nn.adaptive_avg_pool1d": OpRule("reduction", _pool),
    "nn.adaptive_avg_pool2d": OpRule("reduction", _pool),
    "nn.adaptive_avg_pool3d": OpRule("reduction", _pool),
    **{k: OpRule("elementwise", _numel_out(1)) for k in _ELEMENTWISE_UNARY_CHEAP},
    **{k: OpRule("elementwise", _numel_out(4)) for k in _ELEMENTWISE_UNARY_TRANSCENDENTAL},
    **{k: OpRule("elementwise", _numel_out(1)) for k in _ELEMENTWISE_BINARY},
    **{k: OpRule("reduction", _numel_in(1)) for k in _REDUCTIONS},
    # mean, variance, normalise, scale, shift: about 8 operations per element.
    **{k: OpRule("norm", _numel_out(8)) for k in _NORMS},
    **{k: OpRule("data_movement", _zero) for k in _DATA_MOVEMENT},
}

# Kinds that only restructure or name values: zero FLOPs and zero bytes (no kernel runs).
ZERO_COST_KINDS = frozenset({"tuple", "tuple_get_item", "alias", "shape", "match_cast", "shape_of"})

_DEFAULT = OpRule("other", _numel_out(1))


def rule_for(kind: str) -> OpRule:
    """The analysis rule of an op kind; unknown kinds count one FLOP per output element."""
    return RULES.get(kind, _DEFAULT)
