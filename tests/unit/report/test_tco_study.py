"""The fleet study: hand-checked numbers for one cell, invariants, monotonicity, CLI JSON output."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from terrazzo.cli import main
from terrazzo.costmodel.catalog import load_catalog
from terrazzo.report import phases
from terrazzo.report.study import StudyOptions, arch_of, headline, run_study

DEVS = ("a100-80g", "h100", "b200", "gaudi3", "mi300x")


@pytest.fixture(scope="module")
def paper() -> object:
    return run_study(
        load_catalog("paper-2025"),
        StudyOptions(devices=DEVS),
        datasheet=load_catalog("datasheet"),
        profile="paper-2025",
    )


def test_hand_checked_cell(paper) -> None:  # type: ignore[no-untyped-def]
    # Annuity of the paper's H100 ($25,000, 4 years, 8%): 25000·0.08/(1−1.08⁻⁴) = $7,548.02/year
    # = $0.8616/hour, plus Table 5's $0.60/hour operating cost.
    assert paper.device_usd_per_hour["h100"] == pytest.approx(7548.02 / 8760 + 0.60, rel=1e-5)
    r = paper.row("llama3-8b", "fp16", 512, 4096, "interactive", "h100::h100")
    # KV of one 512-token Llama 3 8B prompt in FP16: 2·32 layers·8 kv heads·128·2 bytes·512 = 64 MiB.
    assert r.kv_bytes_per_request == 2 * 32 * 8 * 128 * 2 * 512 == 64 * 2**20
    assert r.ttft_s <= 0.250 and r.tbt_s <= 0.020
    # The balanced system's price: one prefill instance + n decode instances.
    expect_usd = paper.device_usd_per_hour["h100"] * (
        r.prefill_tp + r.decode_instances_per_prefill * r.decode_tp
    )
    assert r.usd_per_hour == pytest.approx(expect_usd)
    assert r.tokens_per_usd == pytest.approx(r.tokens_per_s * 3600 / r.usd_per_hour)
    # The batch is the largest the TBT bound allows: one more sequence breaks it (or memory).
    dev = phases.phase_device(load_catalog("paper-2025")["h100"], load_catalog("datasheet")["h100"])
    arch = arch_of("llama3-8b")
    over = phases.decode_step_latency_s(
        arch, dev, 512 + 4096, r.decode_batch + 1, r.decode_tp, "fp16"
    )
    fits = phases.max_batch(arch, dev, 512 + 4096, r.decode_tp, "fp16")
    assert over > 0.020 or r.decode_batch + 1 > min(fits, 1024)


def test_benefit_is_one_for_baseline(paper) -> None:  # type: ignore[no-untyped-def]
    for r in paper.rows:
        if r.pair == "h100::h100" and r.feasible:
            assert r.tco_benefit == pytest.approx(1.0)
        if r.feasible:
            assert r.tokens_per_s > 0 and r.usd_per_hour > 0
        else:
            assert r.reason and r.tco_benefit is None


def test_monotone_in_sla_and_precision(paper) -> None:  # type: ignore[no-untyped-def]
    loose = run_study(
        load_catalog("paper-2025"),
        StudyOptions(devices=DEVS, tbt_s=0.040, models=("llama3-8b",)),
        datasheet=load_catalog("datasheet"),
    )
    for r in loose.rows:
        tight = paper.row(*r.cell, r.pair)
        if tight.feasible:
            assert r.feasible and r.tokens_per_usd >= tight.tokens_per_usd * (1 - 1e-9), r.pair
    for r in paper.rows:
        if r.sla == "offline" or not r.feasible:
            continue
        off = paper.row(r.model, r.precision, r.isl, r.osl, "offline", r.pair)
        assert off.tokens_per_usd >= r.tokens_per_usd * (1 - 1e-9), r.pair
        if r.precision == "fp16":
            fp8 = paper.row(r.model, "fp8", r.isl, r.osl, r.sla, r.pair)
            assert fp8.feasible and fp8.tokens_per_usd >= r.tokens_per_usd * (1 - 1e-9), r.pair


def test_fp8_without_native_support_is_weights_only(paper) -> None:  # type: ignore[no-untyped-def]
    r = paper.row("llama3-8b", "fp8", 512, 4096, "offline", "a100-80g::h100")
    assert r.fp8_mode == "weights-only::native"
    ds = load_catalog("datasheet")
    a100 = phases.phase_device(load_catalog("paper-2025")["a100-80g"], ds["a100-80g"])
    assert a100.peak_flops_per_s("fp8") == a100.peak_flops_per_s("fp16")
    h100 = phases.phase_device(load_catalog("paper-2025")["h100"], ds["h100"])
    # Paper profile: Table 5's 1979 for FP16, doubled by the datasheet FP8:FP16 ratio.
    assert h100.peak_flops_per_s("fp8") == pytest.approx(2 * 1979e12, rel=0.01)


def test_70b_does_not_fit_one_a100(paper) -> None:  # type: ignore[no-untyped-def]
    arch = arch_of("llama3-70b")
    a100 = phases.phase_device(load_catalog("paper-2025")["a100-80g"])
    assert phases.max_batch(arch, a100, 4608, 1, "fp16") == 0
    assert phases.max_batch(arch, a100, 4608, 4, "fp16") > 0
    r = paper.row("llama3-70b", "fp16", 512, 4096, "offline", "a100-80g::a100-80g")
    assert r.feasible and r.decode_tp >= 2


def test_headline_has_every_cell(paper) -> None:  # type: ignore[no-untyped-def]
    head = headline(paper)
    assert len(head) == 16
    for h in head:
        assert h["best_tco_benefit"] is None or h["best_tco_benefit"] >= 1.0 - 1e-9


def test_cli_json_datasheet_with_cpus_and_old_gpus(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices: {cpu: {}, t4: {}, a100-80g: {}, h100: {}}\nprofile: datasheet\n")
    out = tmp_path / "study.html"
    assert (
        main(
            [
                "tco",
                "study",
                "--fleet",
                str(fleet),
                "--json",
                "-o",
                str(out),
                "--models",
                "llama3-8b",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    need = {"model", "precision", "isl", "osl", "sla", "prefill", "decode", "tokens_per_s", "usd_per_hour",
            "tokens_per_usd", "tco_benefit"}  # fmt: skip
    assert all(need <= set(r) for r in rows)
    assert {r["prefill"] for r in rows} == {"cpu", "t4", "a100-80g", "h100"}
    assert len(rows) == 8 * 16
    base = [r for r in rows if r["prefill"] == r["decode"] == "h100" and r["tokens_per_s"] > 0]
    assert base and all(math.isclose(r["tco_benefit"], 1.0) for r in base)
    text = out.read_text()
    assert (
        text.startswith("<!DOCTYPE html>")
        and "<svg" in text
        and "http://" not in text.split("<svg")[0]
    )


def test_cli_unknown_device_is_a_user_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["tco", "study", "--devices", "h100,h9000", "--json"]) == 2
    assert "h9000" in capsys.readouterr().err


def test_options_are_frozen() -> None:
    o = StudyOptions()
    with pytest.raises(AttributeError):
        o.ttft_s = 1.0  # type: ignore[misc]
    assert replace(o, ttft_s=0.1).ttft_s == 0.1
