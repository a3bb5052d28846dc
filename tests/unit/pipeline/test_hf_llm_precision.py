"""The compute precision an LLM bundle states (``inspect`` prints it): fp32 on a CPU without
fp16 arithmetic, and why, from the CPU's flags, detected rather than assumed."""

from __future__ import annotations

from pathlib import Path

from terrazzo.pipeline.hf_llm import compute_reason


def test_reason_names_what_the_flags_have() -> None:
    epyc = compute_reason({"avx512f", "avx512_vnni", "avx512_bf16"})  # this session's host
    assert "lacks fp16" in epyc and "bf16 dot products (avx512_bf16)" in epyc
    spr = compute_reason({"avx512f", "avx512_fp16", "amx_bf16"})
    assert "has fp16 arithmetic (avx512_fp16)" in spr and "(amx_bf16)" in spr
    plain = compute_reason({"avx2", "fma"})
    assert "lacks fp16" in plain and "no bf16" in plain


def test_reason_follows_this_host() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((set(ln.split(":", 1)[1].split()) for ln in text.splitlines()
                  if ln.startswith("flags")), set())  # fmt: skip
    reason = compute_reason()
    assert reason == compute_reason(flags)
    assert ("has fp16" in reason) == bool({"avx512_fp16", "amx_fp16"} & flags)
