"""Cost model: catalog, roofline, transfers, TCO, measured and calibration profiles (hand-computed values)."""

from __future__ import annotations

import json
import math

import pytest

from terrazzo.costmodel import (
    CalibrationProfile,
    CostModel,
    Efficiency,
    EfficiencyBucket,
    MeasuredProfile,
    TCOOptions,
    annuity_usd_per_year,
    energy_j_per_request,
    load_catalog,
    tco_breakdown,
    usd_per_hour,
    usd_per_million_tokens,
    usd_per_request,
)
from terrazzo.errors import CostModelError
from terrazzo.ir.graph import Graph, Op, TensorType

CANONICAL = (
    "cpu cpu-epyc t4 v100 a10g l4 a40 a100-40g a100-80g l40s h100 h200 b200 mi300x mi325x "
    "gaudi2 gaudi3 inferentia2 tpu-v5e"
).split()


@pytest.fixture(scope="module")
def cat():
    return load_catalog("datasheet")


# --- catalog -------------------------------------------------------------------------------------


def test_catalog_has_every_canonical_device_with_sources(cat):
    assert list(cat) == CANONICAL
    for name, d in cat.items():
        assert d.sources, name
        for key in ("peak_tflops", "mem", "tdp_w", "capex_usd", "cloud_usd_per_hour", "links"):
            assert key in d.sources, (name, key)
        assert set(d.peak_tflops) == {"fp32", "tf32", "fp16", "bf16", "fp8", "fp4", "int8"}
        assert d.mem_bytes > 0 and d.mem_bw_bytes_per_s > 0
        assert d.fallback_target["kind"] == "llvm"


def test_tvm_targets(cat):
    assert dict(cat["cpu"].tvm_target) == {"kind": "llvm", "mcpu": "sapphirerapids"}
    assert dict(cat["cpu-epyc"].tvm_target) == {"kind": "llvm", "mcpu": "znver4"}
    arch = {
        n: cat[n].tvm_target["arch"]
        for n in ("t4", "v100", "a100-40g", "a10g", "a40", "l4", "l40s", "h100", "h200", "b200")
    }
    assert arch == {
        "t4": "sm_75",
        "v100": "sm_70",
        "a100-40g": "sm_80",
        "a10g": "sm_86",
        "a40": "sm_86",
        "l4": "sm_89",
        "l40s": "sm_89",
        "h100": "sm_90",
        "h200": "sm_90",
        "b200": "sm_100",
    }
    assert dict(cat["mi300x"].tvm_target) == {"kind": "rocm", "mcpu": "gfx942"}
    for n in ("gaudi2", "gaudi3", "inferentia2", "tpu-v5e"):
        assert cat[n].tvm_target is None
        assert "TVM" in cat[n].fallback_reason


def test_paper_profile_reproduces_table5_as_published():
    paper = load_catalog("paper-2025")
    table5 = {  # arXiv 2507.19635 Table 5: cost, memory, bandwidth, FP16 TFLOPs, operating $/hr
        "a40": (3000, 48, 696, 75, 0.15),
        "a100-80g": (8000, 80, 2039, 322, 0.25),
        "gaudi3": (12500, 128, 3700, 1678, 0.49),
        "mi300x": (20000, 192, 5300, 1307, 0.52),
        "h100": (25000, 80, 3350, 1979, 0.60),
        "b200": (40000, 192, 8000, 2250, 0.83),
    }
    assert set(paper) == set(table5)
    for name, (cost, mem, bw, tf, op) in table5.items():
        d = paper[name]
        assert (
            d.capex_usd,
            d.mem_bytes,
            d.mem_bw_bytes_per_s,
            d.peak_tflops["fp16"],
            d.operating_usd_per_hour,
        ) == (cost, mem * 10**9, bw * 1e9, tf, op)
        assert "2507.19635" in d.sources["capex_usd"]
    # the corrected values stay in the datasheet profile
    ds = load_catalog("datasheet")
    assert ds["h100"].peak_tflops["fp16"] == pytest.approx(989.4)
    assert ds["a40"].peak_tflops["fp16"] == pytest.approx(149.7)
    assert "sparse" in paper["h100"].notes["peak_tflops.fp16"]


def test_unknown_device_suggests_closest(cat):
    with pytest.raises(CostModelError, match="did you mean 'h100'"):
        cat["h10O"]
    with pytest.raises(CostModelError, match="did you mean 'mi300x'"):
        CostModel(cat).op_latency_s(Op("x", "add", (), ("x",), op_class="elementwise"), "mi300")


def test_bad_catalog_file_names_the_field(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text("base: datasheet\ndevices:\n  h100:\n    mem_bw_gb_per_s: -5\n")
    with pytest.raises(CostModelError, match=r"h100.*mem_bw_gb_per_s"):
        load_catalog(bad)
    missing = tmp_path / "new.yaml"
    missing.write_text("devices:\n  mychip:\n    vendor: x\n    kind: gpu\n    year: 2024\n")
    with pytest.raises(CostModelError, match=r"mychip.*peak_tflops"):
        load_catalog(missing)
    with pytest.raises(CostModelError, match="does not exist"):
        load_catalog(tmp_path / "absent.yaml")


def test_catalog_file_overrides_base(tmp_path):
    f = tmp_path / "cheap.yaml"
    f.write_text("base: datasheet\ndevices:\n  h100:\n    capex_usd: 10000\n")
    c = load_catalog(f)
    assert list(c) == ["h100"] and c["h100"].capex_usd == 10000
    assert c["h100"].mem_bw_bytes_per_s == 3350e9


# --- roofline ------------------------------------------------------------------------------------


def test_roofline_compute_bound_matmul_matches_hand_value(cat):
    m = CostModel(cat)
    n = 4096
    op = Op(
        "mm",
        "matmul",
        ("a", "b"),
        ("mm",),
        op_class="matmul",
        flops=2 * n**3,
        bytes_read=2 * n * n * 2,
        bytes_written=n * n * 2,
    )
    # H100 fp16: 989.4 TFLOPs x 0.65 efficiency; memory 96 MiB at 3350 GB/s x 0.8 is far smaller.
    expected = 2 * n**3 / (989.4e12 * 0.65) + 5e-6
    assert m.op_latency_s(op, "h100", "fp16") == pytest.approx(expected, rel=1e-12)
    # T4 has no bf16: falls back to its fp16 rate
    assert m.op_latency_s(op, "t4", "bf16") == pytest.approx(2 * n**3 / (65e12 * 0.65) + 5e-6)


def test_roofline_memory_bound_elementwise_matches_hand_value(cat):
    m = CostModel(cat)
    n = 1 << 24
    op = Op(
        "add",
        "add",
        ("a", "b"),
        ("add",),
        op_class="elementwise",
        flops=n,
        bytes_read=2 * 4 * n,
        bytes_written=4 * n,
    )
    # CPU: 12 n bytes at 307.2 GB/s x 0.65; launch 2 us
    assert m.op_latency_s(op, "cpu") == pytest.approx(12 * n / (307.2e9 * 0.65) + 2e-6, rel=1e-12)
    assert m.op_memory_bytes(op) == 12 * n


def test_graph_latency_is_sum_of_ops_and_uses_value_dtypes(cat):
    m = CostModel(cat)
    g = Graph(
        "g",
        ops=(
            Op(
                "mm",
                "matmul",
                ("x",),
                ("mm",),
                op_class="matmul",
                flops=2 * 1024**3,
                bytes_read=4 << 20,
                bytes_written=2 << 20,
            ),
            Op(
                "r",
                "relu",
                ("mm",),
                ("r",),
                op_class="elementwise",
                flops=1 << 20,
                bytes_read=2 << 20,
                bytes_written=2 << 20,
            ),
        ),
        values={
            "x": TensorType((1024, 1024), "float16"),
            "mm": TensorType((1024, 1024), "float16"),
            "r": TensorType((1024, 1024), "float16"),
        },
        inputs=("x",),
        outputs=("r",),
    )
    total = m.graph_latency_s(g, "a100-80g")
    parts = [m.op_latency_s(o, "a100-80g", "fp16") for o in g.ops]
    assert total == pytest.approx(sum(parts))
    assert parts[0] == pytest.approx(2 * 1024**3 / (312e12 * 0.65) + 5e-6)


def test_transfers(cat):
    m = CostModel(cat)
    assert m.transfer_latency_s(1e9, "h100", "h100") == 0.0
    # cpu <-> h100: PCIe Gen5 64 GB/s + 10 us
    assert m.transfer_latency_s(1e9, "cpu", "h100") == pytest.approx(10e-6 + 1e9 / 64e9)
    # h100 -> gaudi3: network, slower scale-out is 400 Gb/s = 50 GB/s, + 25 us
    assert m.transfer_latency_s(1e9, "h100", "gaudi3") == pytest.approx(25e-6 + 1e9 / 50e9)
    assert m.link("t4", "cpu").kind == "pcie"


def test_fixed_latency_tool_ops(cat):
    m = CostModel(cat)
    op = Op("search", "tool.invoke", (), ("search",), op_class="tool", attrs=(("latency_s", 0.3),))
    assert m.op_latency_s(op, "cpu") == 0.3


# --- TCO -----------------------------------------------------------------------------------------


def test_annuity_math():
    # 25,000 over 4 years at 8%: 25000 * 0.08 / (1 - 1.08**-4) = 7,548.02
    assert annuity_usd_per_year(25000, 4, 0.08) == pytest.approx(7548.02, abs=0.01)
    assert annuity_usd_per_year(1200, 4, 0.0) == 300.0
    # the payments repay the loan: present value of 4 payments == principal
    a = annuity_usd_per_year(1000, 4, 0.08)
    assert sum(a / 1.08**k for k in range(1, 5)) == pytest.approx(1000)


def test_usd_per_hour_capex_power_and_cloud(cat):
    h = cat["h100"]
    capex_h = 7548.02 / 8760
    assert usd_per_hour(h) == pytest.approx(capex_h + 0.7 * 0.40, rel=1e-5)
    opts = TCOOptions(utilisation=0.5, pue=1.2, usd_per_kwh=0.1, opex_usd_per_hour=0.05)
    assert usd_per_hour(h, opts) == pytest.approx(capex_h + 0.7 * 0.5 * 1.2 * 0.1 + 0.05, rel=1e-5)
    assert usd_per_hour(h, TCOOptions(pricing="cloud")) == 6.88
    # the paper profile uses its published operating cost instead of the power term
    paper = load_catalog("paper-2025")
    assert usd_per_hour(paper["h100"]) == pytest.approx(capex_h + 0.60, rel=1e-5)
    b = tco_breakdown(h)
    assert b.usd_per_hour == pytest.approx(b.capex_usd_per_hour + b.power_usd_per_hour)


def test_tco_errors_name_the_field(cat):
    with pytest.raises(CostModelError, match="capex_usd"):
        usd_per_hour(cat["tpu-v5e"])
    with pytest.raises(CostModelError, match="cloud_usd_per_hour"):
        usd_per_hour(cat["gaudi3"], TCOOptions(pricing="cloud"))
    with pytest.raises(CostModelError, match="pricing"):
        TCOOptions(pricing="lease")
    with pytest.raises(CostModelError, match="utilisation"):
        TCOOptions(utilisation=1.5)


def test_per_request_and_per_token_costs():
    assert usd_per_request(3.6, 10) == pytest.approx(1e-4)
    assert usd_per_million_tokens(3.6, 1000) == pytest.approx(1.0)
    assert energy_j_per_request(700, 7) == pytest.approx(100)


# --- measured and calibration profiles -----------------------------------------------------------

TASKS = {
    "tasks": [
        {
            "name": "prefill",
            "profile": {
                "hp": {"latency_ms": 80, "cost_usd": 0.08},
                "co": {"latency_ms": 130, "cost_usd": 0.05},
            },
        },
        {
            "name": "decode",
            "after": ["prefill"],
            "profile": {
                "hp": {"latency_ms": 25, "cost_usd": 0.03},
                "co": {"latency_ms": 30, "cost_usd": 0.01},
            },
        },
    ],
    "transfers": [{"from": "hp", "to": "co", "latency_ms": 10, "cost_usd": 0.005}],
    "sla": {"latency_ms": 120},
}


def test_measured_profile_overrides_model(cat):
    mp = MeasuredProfile.from_dict(TASKS)
    assert mp.devices == ("hp", "co")
    assert mp.latency_s("decode", "co") == pytest.approx(0.030)
    assert mp.transfer("hp", "co").cost_usd == 0.005 and mp.transfer("co", "hp").latency_s == 0.0
    m = CostModel(cat, measured=mp)
    op = Op("prefill", "llm.prefill", (), ("prefill",), op_class="llm_prefill")
    assert m.op_latency_s(op, "hp") == pytest.approx(0.080)
    assert m.op_cost_usd(op, "co") == 0.05
    assert m.transfer_latency_s(123, "hp", "co") == pytest.approx(0.010)


def test_measured_profile_rejects_negative_latency():
    bad = {"tasks": [{"name": "a", "profile": {"x": {"latency_ms": -1}}}]}
    with pytest.raises(CostModelError, match=r"tasks\.0\.profile\.x\.latency_ms"):
        MeasuredProfile.from_dict(bad)


def test_calibration_profile_roundtrip_and_override(cat, tmp_path):
    prof = CalibrationProfile(
        device="cpu",
        applies_to=("cpu",),
        launch_overhead_s=1e-5,
        efficiency={
            "matmul": (
                EfficiencyBucket(16, Efficiency(0.01, 0.5)),
                EfficiencyBucket(math.inf, Efficiency(0.1, 0.5)),
            )
        },
    )
    path = prof.save(tmp_path / "p.json")
    loaded = CalibrationProfile.load(path)
    assert loaded.efficiency_for("matmul", 10) == Efficiency(0.01, 0.5)
    assert loaded.efficiency_for("matmul", 1e9) == Efficiency(0.1, 0.5)
    m = CostModel(cat, calibration=path)
    spec = m.device("cpu")

    def gemm(m_: int, k: int, n: int) -> Op:
        w = 4 * k * n
        return Op(
            "mm",
            "matmul",
            ("x",),
            ("mm",),
            op_class="matmul",
            flops=2 * m_ * k * n,
            bytes_read=4 * m_ * k + w,
            bytes_written=4 * m_ * n,
            param_bytes=w,
        )

    def expect(op: Op, e: Efficiency) -> float:
        nbytes = op.bytes_read + op.bytes_written
        return (
            max(
                op.flops / (spec.peak_flops_per_s("fp32") * e.compute),
                nbytes / (spec.mem_bw_bytes_per_s * e.memory),
            )
            + 1e-5
        )

    # matmul buckets are keyed on the weight-column walk: N = 1024 fp32 rows are 4 KiB
    # apart, one L1 set for K = 1024 rows -> pressure 64 -> the second bucket
    big = gemm(4, 1024, 1024)
    assert m.op_latency_s(big, "cpu") == pytest.approx(expect(big, Efficiency(0.1, 0.5)))
    # N = 64: 4 lines apart, 16 sets x 8 ways hold K = 64 rows -> pressure 1 -> first bucket
    small = gemm(4, 64, 64)
    assert m.op_latency_s(small, "cpu") == pytest.approx(expect(small, Efficiency(0.01, 0.5)))
    # other devices keep the priors
    assert m.launch_overhead_s("h100") == 5e-6


def test_calibration_profile_bad_field(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(
        json.dumps(
            {
                "format": "terrazzo-calibration/1",
                "device": "cpu",
                "launch_overhead_s": -1,
                "efficiency": {},
            }
        )
    )
    with pytest.raises(CostModelError, match="launch_overhead_s"):
        CalibrationProfile.load(p)
    p.write_text(
        json.dumps(
            {
                "format": "terrazzo-calibration/1",
                "device": "cpu",
                "launch_overhead_s": 0,
                "efficiency": {"matmul": [{"compute": 2.0, "memory": 0.5}]},
            }
        )
    )
    with pytest.raises(CostModelError, match=r"efficiency\.matmul\.0\.compute"):
        CalibrationProfile.load(p)


# --- CLI -----------------------------------------------------------------------------------------


def test_devices_cli_json_and_paper(capsys, monkeypatch):
    from terrazzo.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["devices"]) == set(CANONICAL)
    assert out["devices"]["h100"]["sources"]["mem"].startswith("NVIDIA H100 datasheet")
    assert main(["devices", "--profile", "paper-2025"]) == 0
    text = capsys.readouterr().out
    assert "1,979" in text and "989.4" in text and "Gaudi3" in text
    assert main(["devices", "--profile", "bogus"]) == 2


@pytest.mark.parametrize(
    ("m_", "k", "n", "sets", "work"),
    [
        (32, 64, 64, 16, 1.0),  # 256 B stride: 16 sets, 64 rows fit 16 x 8 ways
        (16, 64, 256, 4, 16.0),  # 1 KiB stride: 4 sets hold 32 rows < 64
        (8, 512, 768, 4, 16.0),  # 3 KiB = 48 lines: gcd(48, 64) = 16 -> 4 sets
        (16, 128, 512, 2, 32.0),
        (1, 1024, 1024, 1, 64.0),  # 4 KiB stride: every row in the same set
        (8, 100, 8, 64, 1.0),  # rows narrower than a line: the walk is sequential
    ],
)
def test_weight_walk_sets_and_work_by_hand(m_, k, n, sets, work):
    from terrazzo.costmodel.profile import op_work, weight_walk_sets

    flops, w, out = 2 * m_ * k * n, 4 * k * n, 4 * m_ * n
    assert weight_walk_sets(flops, w, out) == sets
    nbytes = 4 * m_ * k + w + out
    assert op_work("matmul", flops, nbytes, w, 4 * m_ * k + w) == work
    # without a weight, the footprint of the operands is the measure
    assert op_work("matmul", flops, nbytes, 0, 4 * m_ * k + w) == (4 * m_ * k + w) // 2


def test_conv_work_is_the_reduction_length():
    from terrazzo.costmodel.profile import op_work

    # 3x3 conv, 64 -> 128 channels, 8x8 output: K = 3*3*64 = 576 whatever the size
    m_, k, n = 64, 576, 128
    flops, w, out = 2 * m_ * k * n, 4 * k * n, 4 * m_ * n
    read = 4 * 10 * 10 * 64 + w
    assert op_work("conv", flops, read + out, w, read) == pytest.approx(576)
