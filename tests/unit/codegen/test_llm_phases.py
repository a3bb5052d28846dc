"""LLM phases: TVM-built prefill/decode with a static KV cache equal torch and no-cache decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from terrazzo.codegen.llm_phases import (
    TinyLlamaConfig,
    build_phases,
    example_inputs,
    greedy_generate,
    torch_reference,
)

CFG = TinyLlamaConfig()


@pytest.fixture(scope="module")
def tvm_phases():
    return build_phases(CFG)


def _no_cache_greedy(ref, prompt: np.ndarray, n: int) -> list[int]:
    """Re-run prefill on the growing sequence: greedy decoding without any KV cache."""
    seq, out = list(prompt), []
    for _ in range(n):
        padded = np.zeros((1, CFG.prompt_len), np.int64)
        padded[0, : len(seq)] = seq
        logits = ref["prefill"]({"tokens": padded, "length": np.array([len(seq)])})["logits"]
        out.append(int(np.argmax(logits[0])))
        seq.append(out[-1])
    return out


def test_kv_cache_decoding_equals_recomputation() -> None:
    ref = torch_reference(CFG)
    prompt = np.arange(5, 15)
    assert list(greedy_generate(ref, prompt, 8, CFG)) == _no_cache_greedy(ref, prompt, 8)


@pytest.mark.slow
def test_tvm_phases_match_torch(tvm_phases) -> None:
    ref = torch_reference(CFG)
    ex = example_inputs(CFG)
    for phase in ("prefill", "decode"):
        got, want = tvm_phases[phase](ex[phase]), ref[phase](ex[phase])
        for name in want:
            np.testing.assert_allclose(
                got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{phase}.{name}"
            )
    prompt = np.array([72, 101, 108, 108, 111])  # "Hello"
    assert list(greedy_generate(tvm_phases, prompt, 10, CFG)) == list(
        greedy_generate(ref, prompt, 10, CFG)
    )


def test_generation_bounds_are_checked() -> None:
    ref = torch_reference(CFG)
    with pytest.raises(ValueError, match="exceeds max_len"):
        greedy_generate(ref, np.arange(CFG.prompt_len), CFG.max_len, CFG)
    with pytest.raises(ValueError, match="expected 1.."):
        greedy_generate(ref, np.array([], np.int64), 4, CFG)


def test_kv_cache_bytes_matches_formula() -> None:
    # 2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes
    expected = 2 * CFG.n_layers * CFG.d_model * (CFG.n_kv_heads / CFG.n_heads) * CFG.max_len * 1 * 4
    assert CFG.kv_cache_bytes() == expected


def test_architecture_is_the_cost_models_llm_config() -> None:
    from terrazzo.costmodel import llm

    arch = CFG.arch
    assert isinstance(arch, llm.LLMConfig)
    assert (arch.layers, arch.d_model, arch.heads, arch.kv_heads) == (2, 64, 4, 2)
    assert (arch.intermediate, arch.vocab, arch.head_dim) == (128, 256, CFG.head_dim)
    assert TinyLlamaConfig.from_arch(arch, CFG.prompt_len, CFG.max_len) == CFG
    assert CFG.kv_cache_bytes() == 2 * math.prod(CFG.cache_shape) * 4
