"""LLM phase model: KV cache formula, prefill/decode rooflines, TP, max batch (hand-computed values)."""

from __future__ import annotations

import pytest

from terrazzo.costmodel import CostModel, llm, load_catalog
from terrazzo.errors import CostModelError
from terrazzo.ir.graph import Op, make_attrs


@pytest.fixture(scope="module")
def cat():
    return load_catalog("datasheet")


L8 = llm.PRESETS["llama3-8b"]
L70 = llm.PRESETS["llama3-70b"]


def test_kv_cache_formula():
    # 2 * 32 layers * 4096 * (8/32) * bytes: 131,072 B/token in fp16 (128 KiB)
    assert llm.kv_cache_bytes(L8, 1, 1, "fp16") == 131072
    assert llm.kv_cache_bytes(L8, 4096, 8, "fp8") == 65536 * 4096 * 8
    # 70B: 2 * 80 * 8192 * (8/64) * 2 = 327,680 B/token
    assert llm.kv_cache_bytes(L70, 512, 1, "bf16") == 327680 * 512
    assert L70.kv_bytes_per_token("fp16") == 327680


def test_prefill_and_decode_hand_values(cat):
    h = cat["h100"]
    # prefill 512 tokens, batch 1: compute-bound
    flops = 2 * L8.params * 512 + 2 * 32 * 512 * 512 * 4096
    expected = flops / (989.4e12 * 0.55) + 32 * 5e-6
    assert llm.prefill_latency_s(L8, h, 512) == pytest.approx(expected, rel=1e-9)
    # decode at 1024 context, batch 1: bandwidth-bound on weights + KV
    nbytes = L8.params * 2 + 131072 * 1024
    expected = nbytes / (3350e9 * 0.8) + 32 * 5e-6
    assert llm.decode_step_latency_s(L8, h, 1024) == pytest.approx(expected, rel=1e-9)
    # fp8 halves the bytes
    assert llm.decode_step_latency_s(L8, h, 1024, dtype="fp8") < 0.55 * llm.decode_step_latency_s(
        L8, h, 1024
    )


def test_tensor_parallel_all_reduce(cat):
    h = cat["h100"]
    # ring all-reduce of 1 GB over 4 GPUs at 450 GB/s: 2*3/4 * 1e9/450e9 + 6 * 5us
    assert llm.allreduce_latency_s(1e9, 4, h) == pytest.approx(1.5 / 450 + 30e-6)
    assert llm.allreduce_latency_s(1e9, 1, h) == 0.0
    # small message at TP8 over NVLink: the one-shot custom all-reduce (7 peer reads + 6 us,
    # measured 5.7-7.8 us for <= 32 KB on 8x H100) beats the tree's 2*log2(8) latency steps
    small = 8 * 8192 * 2  # 8 tokens x d_model 8192, fp16
    assert llm.allreduce_latency_s(small, 8, h) == pytest.approx(7 * small / 450e9 + 6e-6)
    # without NVLink-class peers (Gaudi's RoCE scale-up: no one-shot measured) the tree remains
    g = cat["gaudi3"]
    assert llm.allreduce_latency_s(small, 8, g) == pytest.approx(2 * small / 525e9 + 6 * 5e-6)
    # large message at TP8: the ring's 2(p-1)/p bandwidth term wins
    assert llm.allreduce_latency_s(1e9, 8, h) == pytest.approx(1.75 / 450 + 70e-6)
    one = llm.decode_step_latency_s(L70, h, 1024, tp=2)
    four = llm.decode_step_latency_s(L70, h, 1024, tp=4)
    assert four < one
    with pytest.raises(CostModelError, match="chassis_size"):
        llm.decode_step_latency_s(L70, h, 1024, tp=16)


def test_fit_and_min_tp(cat):
    assert llm.min_tp(L8, cat["h100"], 4096) == 1
    assert llm.min_tp(L70, cat["h100"], 4096) == 2  # 141 GB of fp16 weights
    with pytest.raises(CostModelError, match="does not fit t4"):
        llm.min_tp(L70, cat["t4"], 4096 * 64, batch=64)
    tiny = {k: cat[k] for k in ("t4", "l4")}
    with pytest.raises(CostModelError, match="fits no device"):
        llm.devices_that_fit(L70, tiny, 32768, batch=32)


def test_max_batch_monotone_in_bounds(cat):
    h = cat["h100"]
    free = llm.max_batch(L8, h, 512, 4096)
    tight = llm.max_batch(L8, h, 512, 4096, ttft_s=0.25, tbt_s=0.02)
    assert free > tight >= 1
    # memory bound: (80 GB * 0.9 - 16 GB weights) / (4608 tokens * 128 KiB)
    assert free == int((80e9 * 0.9 - L8.params * 2) // (4608 * 131072))
    assert llm.max_batch(L70, h, 512, 4096, tbt_s=0.001) == 0


def test_estimate_disaggregated_pair(cat):
    e = llm.estimate(L8, cat["h100"], cat["gaudi3"], input_tokens=512, output_tokens=4096, batch=8)
    kv = llm.kv_cache_bytes(L8, 512, 8)
    assert e.kv_bytes == kv
    assert e.kv_transfer_s == pytest.approx(25e-6 + kv / 50e9)
    assert e.ttft_s == pytest.approx(e.prefill_s + e.kv_transfer_s)
    assert e.tokens_per_s == pytest.approx(8 / e.tbt_s)
    assert e.tbt_max_s > e.tbt_s
    same = llm.estimate(L8, cat["h100"], input_tokens=512, output_tokens=16)
    assert same.kv_transfer_s == 0.0


def test_cost_model_prices_agent_llm_ops(cat):
    m = CostModel(cat)
    attrs = make_attrs(
        {"preset": "llama3-8b", "dtype": "float16", "input_tokens": 512, "output_tokens": 64}
    )
    pre = Op("a.prefill", "llm.prefill", (), ("kv",), attrs=attrs, op_class="llm_prefill")
    dec = Op("a.decode", "llm.decode", (), ("a",), attrs=attrs, op_class="llm_decode")
    assert m.op_latency_s(pre, "h100") == pytest.approx(llm.prefill_latency_s(L8, cat["h100"], 512))
    assert m.op_latency_s(dec, "h100") == pytest.approx(
        64 * llm.decode_step_latency_s(L8, cat["h100"], 512 + 32)
    )
    assert m.op_memory_bytes(dec) == llm.memory_bytes_per_device(L8, 576, 1)
    # custom architecture from the agent frontend's attributes
    arch = make_attrs(
        {
            "preset": "custom",
            "layers": 2,
            "d_model": 64,
            "heads": 4,
            "kv_heads": 2,
            "ffn_dim": 128,
            "vocab": 100,
            "dtype": "float32",
            "input_tokens": 16,
            "output_tokens": 4,
        }
    )
    tiny = Op(
        "t.decode",
        "llm.decode",
        (),
        ("t",),
        attrs=arch,
        op_class="llm_decode",
        param_bytes=4 * 50000,
    )
    assert 0 < m.op_latency_s(tiny, "cpu") < 1e-3


def test_bad_config_names_field():
    with pytest.raises(CostModelError, match="kv_heads"):
        llm.LLMConfig("x", 2, 64, 4, 3, 128, 100, 1000)
    with pytest.raises(CostModelError, match="layers"):
        llm.LLMConfig("x", 0, 64, 4, 2, 128, 100, 1000)
    with pytest.raises(CostModelError, match="unknown LLM dtype"):
        llm.kv_cache_bytes(L8, 1, 1, "int4")
