"""The P::D fleet simulator: hand-computed TTFT/TBT on tiny traces, queueing, Little's law,
saturation at the analytical capacity, the KV-capacity limit, trace files, the study check, the CLI."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from terrazzo.cli import main
from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import load_catalog
from terrazzo.costmodel.efficiency import LINK_LATENCY_S
from terrazzo.costmodel.llm_sim import FleetSpec, PhasePool, SimOptions, simulate
from terrazzo.costmodel.traces import (
    DISTRIBUTIONS,
    TraceRequest,
    arrival_times,
    load_trace,
    synthetic_trace,
)
from terrazzo.errors import CostModelError

CFG = llm.PRESETS["llama3-8b"]
H100 = load_catalog("datasheet")["h100"]
NET = LINK_LATENCY_S["network"]


def fleet(
    n_p: int = 1,
    n_d: int = 1,
    tp: int = 1,
    prefill_batch: int = 64,
    decode_batch: int = 1024,
    dev: object = H100,
) -> FleetSpec:
    return FleetSpec(
        CFG,
        "fp16",
        PhasePool(dev, n_p, tp, prefill_batch, 65536, 2.0),  # type: ignore[arg-type]
        PhasePool(dev, n_d, tp, decode_batch, 65536, 2.0),  # type: ignore[arg-type]
    )


def prefill(tokens: int, batch: int = 1) -> float:
    return llm.prefill_latency_s(CFG, H100, tokens, batch, "fp16", 1)


def step(ctx: int, batch: int = 1) -> float:
    return llm.decode_step_latency_s(CFG, H100, ctx, batch, "fp16", 1)


def wire(tokens: int) -> float:
    return tokens * CFG.kv_bytes_per_token("fp16") / H100.scaleout_bw_bytes_per_s


# --- hand-computed tiny traces ----------------------------------------------------------------


def test_one_request_alone_matches_the_phase_model() -> None:
    isl, osl = 1000, 40
    r = simulate(fleet(), [TraceRequest(0.0, isl, osl)], keep_requests=True)
    ttft, tbt, e2e = r.per_request[0]
    # TTFT = prefill + KV transfer over the network (latency + bytes / NIC bandwidth).
    assert ttft == pytest.approx(prefill(isl) + NET + wire(isl), rel=1e-12)
    # Token 1 comes from prefill; tokens 2..osl are decode steps at contexts isl+1 .. isl+osl-1.
    decode = sum(step(isl + j) for j in range(1, osl))
    assert e2e == pytest.approx(ttft + decode, rel=1e-9)
    assert tbt == pytest.approx(decode / (osl - 1), rel=1e-9)
    assert r.completed == 1 and r.max_decode_batch == 1 and r.max_prefill_batch == 1


def test_two_requests_contending_for_one_prefill_queue() -> None:
    isl, osl = 2000, 8
    trace = [TraceRequest(0.0, isl, osl), TraceRequest(0.0, isl, osl)]
    r = simulate(fleet(prefill_batch=1), trace, keep_requests=True)
    (t1, _, _), (t2, _, _) = r.per_request
    p, x = prefill(isl), NET + wire(isl)
    assert t1 == pytest.approx(p + x, rel=1e-12)
    assert t2 == pytest.approx(2 * p + x, rel=1e-12)  # waited one whole prefill
    assert r.queue_mean_s == pytest.approx(p / 2, rel=1e-12)


def test_a_batched_prefill_shares_the_nic() -> None:
    isl, osl = 2000, 8
    trace = [TraceRequest(0.0, isl, osl), TraceRequest(0.0, isl, osl)]
    r = simulate(fleet(prefill_batch=2), trace, keep_requests=True)
    (t1, _, _), (t2, _, _) = r.per_request
    p2 = prefill(isl, 2)
    assert t1 == pytest.approx(p2 + wire(isl) + NET, rel=1e-12)
    # The second KV leaves after the first on the same egress NIC.
    assert t2 == pytest.approx(p2 + 2 * wire(isl) + NET, rel=1e-12)
    assert r.max_prefill_batch == 2


def test_a_late_request_joins_the_running_decode_batch_at_an_iteration_boundary() -> None:
    isl, osl = 500, 200
    first = TraceRequest(0.0, isl, osl)
    r1 = simulate(fleet(), [first], keep_requests=True)
    t_join = r1.per_request[0][0] + 50 * step(isl + 25)  # arrives mid-decode of the first
    late = TraceRequest(t_join - prefill(isl) - NET - wire(isl), isl, osl)
    r = simulate(fleet(), [first, late], keep_requests=True)
    assert r.max_decode_batch == 2
    # Sharing the batch slows the first request down, but by less than serving them one by one.
    e2e_alone = r1.per_request[0][2]
    e2e_shared = r.per_request[0][2]
    assert e2e_alone < e2e_shared < e2e_alone + (osl - 1) * step(isl + osl, 2)
    # The late one's TTFT is untouched (prefill was idle).
    assert r.per_request[1][0] == pytest.approx(r1.per_request[0][0], rel=1e-9)


# --- queueing and capacity --------------------------------------------------------------------


def test_littles_law_on_a_long_poisson_run() -> None:
    trace = synthetic_trace("azure-conv-2023", 6000, 8.0, "poisson", seed=3)
    r = simulate(fleet(n_d=2), trace, SimOptions(warmup_fraction=0.2))
    lam, w = r.window_arrival_rate_per_s, r.window_e2e_mean_s
    assert lam == pytest.approx(8.0, rel=0.05)
    assert r.mean_in_system == pytest.approx(lam * w, rel=0.05)


def test_throughput_saturates_at_the_analytical_decode_capacity() -> None:
    isl, osl, batch = 512, 256, 32
    # Decode-bound: one decode instance capped at 32 sequences, offered twice what it can take.
    mean_step = step(isl + osl // 2, batch)
    cap_rps = batch / ((osl - 1) * mean_step)
    trace = synthetic_trace(f"fixed:{isl}/{osl}", 3000, 2 * cap_rps, "poisson", seed=1)
    r = simulate(fleet(n_p=2, decode_batch=batch), trace, SimOptions(warmup_fraction=0.3))
    assert r.mean_decode_batch == pytest.approx(batch, rel=0.02)
    assert r.throughput_tokens_per_s == pytest.approx(cap_rps * osl, rel=0.03)
    assert r.tbt_p50_s == pytest.approx(mean_step, rel=0.02)
    # Below capacity it serves what is offered.
    light = synthetic_trace(f"fixed:{isl}/{osl}", 3000, 0.5 * cap_rps, "poisson", seed=1)
    r2 = simulate(fleet(n_p=2, decode_batch=batch), light, SimOptions(warmup_fraction=0.3))
    assert r2.throughput_tokens_per_s == pytest.approx(0.5 * cap_rps * osl, rel=0.08)


def test_throughput_saturates_at_the_analytical_prefill_capacity() -> None:
    isl, osl, b = 4096, 4, 4
    cap_rps = b / prefill(isl, b)
    trace = synthetic_trace(f"fixed:{isl}/{osl}", 3000, 2 * cap_rps, "poisson", seed=2)
    r = simulate(fleet(prefill_batch=b, n_d=4), trace, SimOptions(warmup_fraction=0.3))
    assert r.max_prefill_batch == b
    assert r.throughput_tokens_per_s == pytest.approx(cap_rps * osl, rel=0.03)
    assert r.prefill_utilisation > 0.95


def test_kv_capacity_limits_the_decode_batch() -> None:
    isl, osl = 1000, 100
    seq_kv = CFG.kv_bytes_per_token("fp16") * (isl + osl)
    mem = int((CFG.weight_bytes("fp16") + 3.5 * seq_kv) / llm.MEM_UTILISATION)
    small = replace(H100, mem_bytes=mem)  # room for 3 whole sequences beside the weights
    f = fleet(dev=small)
    assert f.kv_capacity_tokens(f.decode) // (isl + osl) == 3
    trace = [TraceRequest(0.0, isl, osl) for _ in range(12)]
    r = simulate(f, trace)
    assert r.completed == 12 and r.max_decode_batch == 3
    # The batch cap binds the same way when memory does not.
    assert simulate(fleet(decode_batch=2), trace).max_decode_batch == 2
    # A request that can never fit is refused up front, naming it.
    with pytest.raises(CostModelError, match="request 0 needs KV for 4000 tokens"):
        simulate(f, [TraceRequest(0.0, 3000, 1000)])


def test_ten_thousand_requests_simulate_in_seconds() -> None:
    trace = synthetic_trace("azure-conv-2023", 10_000, 10.0, "poisson", seed=0)
    t = time.perf_counter()
    r = simulate(fleet(n_p=1, n_d=2), trace, SimOptions(ttft_s=2.0, tbt_s=0.1))
    elapsed = time.perf_counter() - t
    assert r.completed == 10_000
    assert r.sla_attainment is not None and 0.0 <= r.sla_attainment <= 1.0
    assert elapsed < 30.0  # ~1 s on an idle core; generous for a loaded CI machine


def test_cost_per_million_tokens_uses_the_fleet_price() -> None:
    trace = synthetic_trace("fixed:512/128", 500, 2.0, "uniform")
    r = simulate(fleet(n_p=1, n_d=3), trace)
    assert r.usd_per_hour == pytest.approx(4 * 2.0)
    assert r.usd_per_million_tokens == pytest.approx(8.0 / 3600 / r.throughput_tokens_per_s * 1e6)


# --- traces -------------------------------------------------------------------------------


def test_synthetic_lengths_match_the_published_trace_statistics() -> None:
    rng = np.random.default_rng(0)
    for name, (med_in, med_out, mean_in, mean_out) in {
        "azure-code-2023": (1469, 13, 2048, 27.9),
        "azure-conv-2023": (1020, 129, 1155, 211),
    }.items():
        ins, outs = DISTRIBUTIONS[name].sample(40_000, rng)
        assert np.median(ins) == pytest.approx(med_in, rel=0.03)
        assert np.median(outs) == pytest.approx(med_out, rel=0.05)
        assert ins.mean() == pytest.approx(mean_in, rel=0.05)
        assert outs.mean() == pytest.approx(mean_out, rel=0.08)


def test_arrival_processes_have_the_requested_rate_and_burstiness() -> None:
    rng = np.random.default_rng(1)
    for proc, cv in (("poisson", 1.0), ("gamma:4", 4.0), ("uniform", 0.0)):
        t = arrival_times(50_000, 5.0, proc, rng)
        gaps = np.diff(t)
        assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.05)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.15 * max(cv, 1))
    with pytest.raises(CostModelError, match="gamma:CV"):
        arrival_times(10, 1.0, "bursty", rng)


def test_trace_replay_from_csv_and_jsonl(tmp_path: Path) -> None:
    # The Azure 2023 trace's own format: ISO timestamps with 7 fractional digits.
    csv_path = tmp_path / "azure.csv"
    csv_path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.1805900,879,55\n"
    )
    tr = load_trace(csv_path)
    assert [(r.input_tokens, r.output_tokens) for r in tr] == [(879, 55), (374, 44), (396, 109)]
    assert tr[0].arrival_s == 0.0
    assert tr[1].arrival_s == pytest.approx(0.5, abs=1e-6)
    assert tr[2].arrival_s == pytest.approx(4.8145790, abs=1e-6)
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"arrival_s": r.arrival_s, "input_tokens": r.input_tokens,
                                        "output_tokens": r.output_tokens}) for r in tr) + "\n")  # fmt: skip
    assert load_trace(jl) == tr
    # Replaying it gives what simulating the same requests directly gives.
    assert simulate(fleet(), load_trace(jl)) == simulate(fleet(), list(tr))


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", "", "is empty"),
        ("nocol.csv", "time,input_tokens\n0,5\n", "no output tokens column"),
        ("neg.csv", "arrival_s,input_tokens,output_tokens\n0,-5,3\n", "line 2: input_tokens '-5'"),
        ("zero.csv", "arrival_s,input_tokens,output_tokens\n0,5,0\n", "line 2: output_tokens '0'"),
        ("nan.csv", "arrival_s,input_tokens,output_tokens\nnan,5,3\n", "line 2: arrival_s 'nan'"),
        ("date.csv", "timestamp,input_tokens,output_tokens\nyesterday,5,3\n", "neither seconds"),
        ("bad.jsonl", '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 3}\n{oops\n', "line 2 is not JSON"),
        ("list.jsonl", "[1, 2, 3]\n", "expected a JSON object"),
        ("bin.csv", b"\xff\xfe\x00garbage", "cannot be read as text"),
    ],
)  # fmt: skip
def test_bad_trace_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | bytes | None, needle: str
) -> None:  # fmt: skip
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    elif text is not None:
        p.write_text(text)
    rc = main(["tco", "simulate", "--model", "llama3-8b", "--trace", str(p), "--json"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and name in lines[0], captured.err


# --- the CLI and the study check ----------------------------------------------------------


def test_cli_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["tco", "simulate", "--model", "llama3-8b", "--prefill", "h100:1", "--decode", "h100:2",
               "--trace", "synthetic:azure-code-2023", "--rate", "2", "--duration", "120",
               "--ttft", "2s", "--tbt", "100ms", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fleet"]["decode"] == {"device": "h100", "instances": 2, "tp": 1}
    assert out["requests"] == 240 and out["completed"] == 240
    for k in ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "sla_attainment",
              "throughput_tokens_per_s", "usd_per_million_tokens"):  # fmt: skip
        assert isinstance(out[k], float) and math.isfinite(out[k]) and out[k] > 0, k
    assert out["ttft_p50_s"] <= out["ttft_p99_s"]


def test_cli_rejects_a_bad_pool_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tco", "simulate", "--prefill", "h100:zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DEVICE[:INSTANCES]" in err[0]


def test_study_plan_matches_the_simulator_within_15_percent() -> None:
    from terrazzo.report.sim_check import check_row, instance_counts
    from terrazzo.report.study import StudyOptions, run_study

    assert instance_counts(2.5) == (2, 5)
    n_p, n_d = instance_counts(0.3)
    assert n_d / n_p <= 0.3 and n_d / n_p == pytest.approx(0.3, rel=0.02)
    cat, ds = load_catalog("paper-2025"), load_catalog("datasheet")
    res = run_study(cat, StudyOptions(models=("llama3-70b",), precisions=("fp8",),
                                      seq_lens=((4096, 512),), devices=("h100", "mi300x")),
                    datasheet=ds, profile="paper-2025")  # fmt: skip
    row = res.row("llama3-70b", "fp8", 4096, 512, "interactive", "h100::h100")
    c = check_row(row, res, cat, ds, max_requests=4000)
    assert abs(c.throughput_rel_error) <= 0.15, c
    assert abs(c.tbt_rel_error) <= 0.15, c
    assert c.sla_attainment is not None and 0 < c.sla_attainment <= 1
    # TTFT: one prompt per prefill batch, so its median sits near the plan's prefill + transfer,
    # and queueing shows in the tail.
    assert c.sim_ttft_p99_s > c.sim_ttft_p50_s >= 0.95 * c.analytical_ttft_s
