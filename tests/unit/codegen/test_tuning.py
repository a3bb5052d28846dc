"""Schedule programs, the offline proposer per kernel class, the loop, the DB and apply_tuning."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from terrazzo.codegen.tuning import (  # noqa: E402
    MeasureOptions,
    OfflineProposer,
    ScheduleProgramError,
    Trial,
    TuneOptions,
    TuningDatabase,
    TuningRecord,
    analyse,
    apply_program,
    apply_tuning,
    extract_kernels,
    local_hardware,
    parse_program,
    rank_kernels,
    target_key,
    tune_kernel,
    tune_module,
    workload_hash,
)
from terrazzo.codegen.tuning import workloads as W  # noqa: E402
from terrazzo.codegen.tuning.measure import KernelEvaluator, build  # noqa: E402
from terrazzo.errors import TuningError  # noqa: E402

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
FAST = MeasureOptions(min_measure_s=0.002, min_repeats=3)


def _mm_steps(extra: list[dict]) -> dict:
    return {
        "steps": [
            {"op": "get_sblock", "name": "C", "out": "C"},
            {"op": "get_loops", "block": "C", "out": ["i", "j", "k"]},
            *extra,
        ]
    }


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ({"steps": [{"op": "eval", "code": "1"}]}, "unknown primitive 'eval'"),
        ({"steps": [{"op": "parallel"}]}, "parallel: loop: Field required"),
        ({"steps": [{"op": "parallel", "loop": "x", "junk": 1}]}, "junk"),
        ("{not json", "not valid JSON"),
        ({"plan": []}, 'expected an object {"steps"'),
    ],
)
def test_parse_rejects_with_precise_reason(program, reason: str) -> None:
    with pytest.raises(ScheduleProgramError, match=None) as e:
        parse_program(program)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ([{"op": "vectorize", "loop": "q"}], "step 2: loop name 'q' is unbound"),
        ([{"op": "vectorize", "loop": "C"}], "loop name 'C' is a block"),
        (
            [{"op": "split", "loop": "i", "factors": [4, 4], "out": ["a", "b"]}],
            "factors [4, 4] multiply to 16, expected 32",
        ),
        ([{"op": "split", "loop": "i", "factors": [None, None], "out": ["a", "b"]}], "at most one"),
        ([{"op": "parallel", "loop": "k"}], "not a data parallel block iter"),
        ([{"op": "get_loops", "block": "C", "out": ["a"]}], "has 3 loops, program names 1"),
    ],
)
def test_apply_rejects_with_precise_reason(extra: list[dict], reason: str) -> None:
    func = W.matmul(32, 32, 32)
    with pytest.raises(ScheduleProgramError) as e:
        apply_program(func, parse_program(_mm_steps(extra)))
    assert reason in str(e.value)


def test_unknown_block_reports_tvm_reason() -> None:
    prog = parse_program({"steps": [{"op": "get_sblock", "name": "nope", "out": "b"}]})
    with pytest.raises(ScheduleProgramError, match="Cannot find a block with the name: nope"):
        apply_program(W.matmul(8, 8, 8), prog)


def test_program_json_round_trip() -> None:
    prog = parse_program(
        _mm_steps([{"op": "split", "loop": "j", "factors": [None, 8], "out": ["j0", "j1"]}])
    )
    assert parse_program(prog.to_json()) == prog


@pytest.mark.parametrize("name", sorted(W.KERNELS))
def test_offline_proposer_candidates_are_correct_for_each_class(name: str) -> None:
    kernel = analyse(name, W.KERNELS[name]())
    ev = KernelEvaluator(kernel, TARGET, FAST)
    props = OfflineProposer().propose(kernel, TARGET, (), 3, local_hardware())
    assert len(props) == 3
    for p in props:
        m = ev.measure(apply_program(kernel.func, p.program))
        assert m.ok, (p.program.to_json(), m.reason)
    assert len({p.program.key() for p in props}) == 3


def test_kernel_classes_and_ranking() -> None:
    kinds = {n: analyse(n, f()).kernel_class for n, f in W.KERNELS.items()}
    assert kinds == {
        "matmul": "matmul",
        "conv": "conv",
        "conv_nhwc": "conv",
        "softmax": "reduction",
        "elementwise": "elementwise",
    }
    ranked = rank_kernels(extract_kernels(W.mlp_module(32, 64, 64, 8), TARGET))
    assert ranked[0][0].kernel_class == "matmul"
    assert abs(sum(s for _, s in ranked) - 1.0) < 1e-9
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_workload_hash_ignores_names_but_not_shapes() -> None:
    assert workload_hash(W.matmul(16, 16, 16)) == workload_hash(W.matmul(16, 16, 16))
    assert workload_hash(W.matmul(16, 16, 16)) != workload_hash(W.matmul(16, 16, 32))


def test_loop_improves_a_matmul_and_records_it(tmp_path) -> None:
    kernel = analyse("mm", W.matmul(64, 64, 64))
    db = TuningDatabase(tmp_path / "records.jsonl")
    seen = []
    res = tune_kernel(
        kernel,
        TARGET,
        OfflineProposer(),
        TuneOptions(trials=6, batch=3, measure=FAST),
        db=db,
        progress=lambda k, t, best: seen.append((t.index, best)),
    )
    assert [i for i, _ in seen] == list(range(6))
    assert res.best_latency_s is not None and res.speedup is not None and res.speedup > 2
    assert all(t.ok for t in res.trials), [t.reason for t in res.trials if not t.ok]
    assert len(db) == 1
    db.save()
    again = TuningDatabase(tmp_path / "records.jsonl")
    rec = again.lookup(kernel.workload_hash, TARGET)
    assert rec is not None and rec.latency_s == res.best_latency_s
    assert TuningDatabase.from_jsonl(again.to_jsonl()).to_jsonl() == again.to_jsonl()


def test_database_keeps_the_fastest_and_rejects_bad_lines() -> None:
    db = TuningDatabase()
    key = target_key(TARGET)
    assert db.add(TuningRecord("h", key, '{"steps":[]}', 2e-3))
    assert db.add(TuningRecord("h", key, '{"steps":[]}', 1e-3))
    assert not db.add(TuningRecord("h", key, '{"steps":[]}', 5e-3))
    assert db.lookup("h", TARGET).latency_s == 1e-3
    assert target_key({"kind": "llvm", "num-cores": 8}) == key  # cores do not split records
    with pytest.raises(TuningError, match="records.jsonl:2"):
        TuningDatabase.from_jsonl(db.to_jsonl() + "{bad\n")
    with pytest.raises(TuningError, match="latency_s must be positive"):
        TuningRecord.from_json(
            TuningRecord("h", key, "{}", 1.0)
            .to_json()
            .replace('"latency_s":1.0', '"latency_s":-1.0')
        )


def test_tune_module_then_apply_tuning_compiles_same_numbers() -> None:
    from tvm import relax

    mod = W.mlp_module(8, 64, 128, 10)
    db = TuningDatabase()
    results = tune_module(
        mod,
        TARGET,
        OfflineProposer,
        TuneOptions(trials=3, batch=3, measure=FAST),
        db=db,
        max_kernels=2,
    )
    assert results and len(db) >= 1
    with TARGET:
        low = relax.get_pipeline("zero")(mod)
    tuned = apply_tuning(low, TARGET, db)
    n_sched = sum(
        1
        for _, f in tuned.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs
    )
    assert n_sched == len(db)
    x = np.random.default_rng(0).standard_normal((8, 64)).astype("float32")
    outs = []
    for m in (low, tuned):
        vm = relax.VirtualMachine(tvm.compile(m, target=TARGET), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert apply_tuning(low, TARGET, None) is low


def _conv_relax_module():
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 4, 8, 8), "float32"))
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1))
            z = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(z)
    return bb.get()


def test_prepare_module_makes_cpu_convs_nhwc_and_keeps_numbers() -> None:
    from tvm import relax

    from terrazzo.codegen.tuning import prepare_module

    mod = _conv_relax_module()
    prepared = prepare_module(mod, TARGET)
    names = [b.name for k in extract_kernels(prepared, TARGET) for b in k.blocks]
    assert "conv2d_nhwc" in names and "conv2d_nchw" not in names
    # no per-call weight transpose: FoldConstant folds it at build time
    assert not any(
        k.kernel_class == "elementwise" and k.bytes_accessed == 2 * 8 * 4 * 9 * 4
        for k in extract_kernels(prepared, TARGET)
    )
    assert prepare_module(mod, tvm.target.Target("cuda")) is mod
    assert prepare_module(W.mlp_module(8, 16, 16, 4), TARGET) is not None
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype("float32")
    outs = []
    for m in (mod, prepared):
        with TARGET:
            low = relax.get_pipeline("zero")(m)
        vm = relax.VirtualMachine(tvm.compile(low, target=TARGET), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_packed_conv_weights_stream_and_tune_correctly() -> None:
    """prepare_module packs NHWC conv weights into [CO/8, KH, KW, CI, 8] blocks (a strided,
    padded conv with 16 output channels here), is idempotent, keeps the numbers, and the
    offline conv template tunes the packed kernel to valid (verified) schedules whose
    channel tiles wider than a vector are unrolled over 8-lane vectors."""
    from tvm import relax
    from tvm.script import relax as R

    from terrazzo.codegen.tuning import PACK_LANES, prepare_module

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 8, 9, 9), "float32"))
    w = np.random.default_rng(2).standard_normal((16, 8, 3, 3)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=2, padding=1))
            z = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(z)
    mod = bb.get()
    prepared = prepare_module(mod, TARGET)
    assert prepare_module(prepared, TARGET) is prepared  # idempotent
    (conv,) = [k for k in extract_kernels(prepared, TARGET) if k.kernel_class == "conv"]
    shapes = [tuple(int(d) for d in p.shape) for p in conv.func.params]
    assert (2, 3, 3, 8, PACK_LANES) in shapes  # packed weights, no HWIO weight left
    assert not any(len(s) == 4 and s[-1] == 16 and s[0] == 3 for s in shapes[1:2])
    xs = np.random.default_rng(3).standard_normal((1, 8, 9, 9)).astype("float32")
    outs = []
    for m in (mod, prepared):
        with TARGET:
            low = relax.get_pipeline("zero")(m)
        vm = relax.VirtualMachine(tvm.compile(low, target=TARGET), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(xs, tvm.cpu())).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    res = tune_kernel(conv, TARGET, OfflineProposer(), TuneOptions(trials=4, measure=FAST))
    assert res.best_program is not None
    assert all(t.ok for t in res.trials), [t.reason for t in res.trials if not t.ok]
    wide = [t for t in res.trials if '"co_l"' in t.program.to_json()]
    assert wide  # vt=16 seeds split channels into 8-lane vectors


def test_large_input_kernels_are_timed_cold() -> None:
    """Kernels whose inputs exceed cold_above_bytes are timed after a cache flush."""
    from terrazzo.codegen.tuning import MeasureOptions

    (k,) = extract_kernels(tvm.IRModule({"main": W.KERNELS["matmul"]()}), TARGET, lowered=True)
    in_bytes = 2 * 64 * 64 * 4
    cold = KernelEvaluator(k, TARGET, MeasureOptions(n_input_sets=1, cold_above_bytes=in_bytes - 1))
    warm = KernelEvaluator(k, TARGET, MeasureOptions(n_input_sets=1, cold_above_bytes=in_bytes))
    forced = KernelEvaluator(k, TARGET, MeasureOptions(n_input_sets=1, cache_flush_bytes=1 << 20))
    assert cold.flush_bytes() == 64 << 20
    assert warm.flush_bytes() == 0
    assert forced.flush_bytes() == 1 << 20
    ex = build(k.func, TARGET)
    assert cold.time_executable(ex) > 0


def test_ranking_uses_the_cost_model_when_given() -> None:
    from terrazzo.codegen.tuning import kernel_op
    from terrazzo.costmodel import CostModel, load_catalog

    kernels = extract_kernels(W.mlp_module(32, 64, 64, 8), TARGET)
    cm = CostModel(load_catalog())
    device = next(iter(cm.devices))
    ranked = rank_kernels(kernels, cost_model=cm, device=device)
    want = {k.workload_hash: k.calls * cm.op_latency_s(kernel_op(k), device) for k in kernels}
    total = sum(want.values())
    for k, share in ranked:
        assert share == pytest.approx(want[k.workload_hash] / total)
    assert kernel_op(kernels[0]).flops == int(kernels[0].flops)


def test_offline_proposer_tiles_transposes_and_uses_every_seed() -> None:
    from tvm import te, topi

    from terrazzo.codegen.tuning.workloads import _prim

    a = te.placeholder((32, 48), "float32", name="A")
    kernel = analyse("tr", _prim(a, topi.transpose(a, (1, 0))))
    ev = KernelEvaluator(kernel, TARGET, FAST)
    prop = OfflineProposer()
    hist: list = []
    notes = []
    for _ in range(3):
        for p in prop.propose(kernel, TARGET, tuple(hist), 2, local_hardware()):
            m = ev.measure(apply_program(kernel.func, p.program))
            assert m.ok, m.reason
            hist.append(Trial(len(hist), "offline", p.program, True, m.latency_s, "ok", "", p.note))
            notes.append(p.note)
    assert any("tile2d=16" in n for n in notes)
    assert len(set(notes)) == len(notes) == 6


@pytest.mark.slow
def test_tune_cli_writes_records_that_compile_applies(tmp_path, capsys) -> None:
    import warnings

    from terrazzo.cli import main
    from terrazzo.codegen import compile_module, host_target
    from terrazzo.pipeline import load_model

    db_path = tmp_path / "db.jsonl"
    rc = main(
        [
            "tune",
            "zoo:mlp",
            "--trials",
            "3",
            "--batch",
            "3",
            "--kernels",
            "1",
            "--tuning",
            str(db_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "trial 3/3" in out and "fused_matmul_add_relu" in out
    db = TuningDatabase(db_path)
    assert len(db) == 1
    graph, _ = load_model("zoo:mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a record that no longer applies warns
        compile_module(graph.relax_mod, host_target(), tuning_db=db)
    assert main(["tune", "zoo:mlp", "--trials", "0", "--tuning", str(db_path)]) == 2
    assert "--trials, --batch and --kernels must be at least 1" in capsys.readouterr().err


def test_conv_template_keeps_small_feature_maps_in_the_register_tile() -> None:
    kernel = analyse("conv_small", W.conv2d_nhwc(1, 16, 2, 16, 3))
    ev = KernelEvaluator(kernel, TARGET, FAST)
    props = OfflineProposer().propose(kernel, TARGET, (), 6, local_hardware())
    assert any("hin=1" in p.note for p in props)
    for p in props:
        m = ev.measure(apply_program(kernel.func, p.program))
        assert m.ok, (p.note, m.reason)


def test_fallback_roofline_comes_from_the_cost_model_local_cpu(tmp_path, monkeypatch) -> None:
    from terrazzo.codegen.tuning.kernel import DEFAULT_MEM_BW_BYTES_PER_S, local_roofline
    from terrazzo.costmodel import local_cpu_spec
    from terrazzo.costmodel.profile import CalibrationProfile

    monkeypatch.delenv("TERRAZZO_CALIBRATION", raising=False)
    monkeypatch.setenv("TERRAZZO_CACHE", str(tmp_path / "empty"))
    local_roofline.cache_clear()
    try:
        spec = local_cpu_spec(bw_bytes_per_s=DEFAULT_MEM_BW_BYTES_PER_S)
        peak, bw = local_roofline()
        assert peak == pytest.approx(spec.peak_tflops["fp32"] * 1e12)
        assert bw == DEFAULT_MEM_BW_BYTES_PER_S
        # A saved calibration profile's device spec wins (its measured bandwidth).
        prof = CalibrationProfile(
            device="local-cpu",
            applies_to=("local-cpu",),
            launch_overhead_s=1e-6,
            efficiency={},
            device_spec=local_cpu_spec(bw_bytes_per_s=7.5e9),
        )
        prof.save(tmp_path / "c" / "calibration" / "local-cpu.json")
        monkeypatch.setenv("TERRAZZO_CACHE", str(tmp_path / "c"))
        local_roofline.cache_clear()
        peak2, bw2 = local_roofline()
        assert bw2 == pytest.approx(7.5e9)
        assert peak2 == pytest.approx(peak, rel=0.05)
        kernels = extract_kernels(W.mlp_module(32, 64, 64, 8), TARGET)
        want = {k.workload_hash: k.predicted_latency_s(peak2, bw2) for k in kernels}
        ranked = rank_kernels(kernels)
        assert ranked[0][1] == pytest.approx(want[ranked[0][0].workload_hash] / sum(want.values()))
    finally:
        local_roofline.cache_clear()


def test_matmul_micro_kernel_variants_are_correct_with_and_without_epilogue() -> None:
    from tvm import te, topi

    from terrazzo.codegen.tuning.offline import build_program
    from terrazzo.codegen.tuning.workloads import _prim

    a = te.placeholder((24, 32), "float32", name="A")
    w = te.placeholder((32, 48), "float32", name="W")
    bias = te.placeholder((48,), "float32", name="bias")
    r = te.reduce_axis((0, 32), name="k")
    mm = te.compute((24, 48), lambda i, j: te.sum(a[i, r] * w[r, j], axis=r), name="mm")
    fused = analyse("mm_bias_relu", _prim(a, w, bias, topi.nn.relu(mm + bias)))
    x = te.placeholder((3, 16, 32), "float32", name="X")
    y = te.placeholder((3, 32, 24), "float32", name="Y")
    bmm = analyse("bmm", _prim(x, y, topi.nn.batch_matmul(x, y, transpose_b=False)))
    plain = analyse("mm", W.matmul(24, 48, 32))
    hw = local_hardware()
    lanes = hw.vector_bits // 32
    seeds = OfflineProposer()._mk_seeds(lanes)
    for kernel in (plain, fused, bmm):
        assert kernel.kernel_class == "matmul"
        ev = KernelEvaluator(kernel, TARGET, FAST)
        keys = set()
        variants = [*seeds, {**seeds[0], "nc": 8, "vt": 4, "rt": 3}]
        for d in variants if kernel is plain else [variants[0], variants[1], variants[3]]:
            prog = build_program(kernel, d, lanes)
            ops = [s.op for s in prog.steps]
            assert "decompose_reduction" in ops and "reorder" in ops
            m = ev.measure(apply_program(kernel.func, prog))
            assert m.ok, (d, prog.to_json(), m.reason)
            keys.add(prog.key())
            if d.get("pack") and kernel is not fused:
                # The right-hand operand (B, Y) is packed per column panel.
                assert any(s.op == "cache_read" and s.buffer_index == 1 for s in prog.steps)
        assert len(keys) >= (5 if kernel is plain else 3)
    # The first round of a matmul mixes micro-kernel seeds with the generic tiled ones.
    notes = [p.note for p in OfflineProposer().propose(plain, TARGET, (), 4, hw)]
    assert sum("mk=1" in n for n in notes) == 2


def test_cpu_records_are_keyed_by_the_measuring_cpu() -> None:
    """A CPU record names the CPU model and ISA flags it was measured on; a database from a
    different CPU (same target string) finds nothing here, so that machine retunes."""
    import json

    from terrazzo.codegen.tuning.database import cpu_fingerprint

    key = json.loads(target_key(TARGET))
    assert key["host_cpu"] == cpu_fingerprint()
    model, _, isa = cpu_fingerprint().partition("|")
    assert model and len(isa) == 12
    other = json.dumps({**key, "host_cpu": "AMD EPYC 7763|0123456789ab"}, sort_keys=True,
                       separators=(",", ":"))  # fmt: skip
    db = TuningDatabase()
    db.add(TuningRecord("h", other, '{"steps":[]}', 1e-3))
    assert db.lookup("h", TARGET) is None
    assert db.lookup("h", other) is not None


def test_cpu_records_are_keyed_by_the_thread_count(monkeypatch) -> None:
    """A schedule tuned at one thread is serial; a build for two threads must not reuse it.
    The key follows TVM_NUM_THREADS (TVM's own knob), so tune and run agree on it."""
    import json

    from terrazzo.codegen.tuning.database import cpu_threads

    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    one = target_key(TARGET)
    assert cpu_threads() == 1 and json.loads(one)["threads"] == "1"
    db = TuningDatabase()
    db.add(TuningRecord("h", one, '{"steps":[]}', 1e-3))
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert json.loads(target_key(TARGET))["threads"] == "2"
    assert db.lookup("h", TARGET) is None
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert db.lookup("h", TARGET) is not None


def test_tuned_record_is_retimed_interleaved_and_carries_the_load(tmp_path) -> None:
    kernel = analyse("mm", W.matmul(64, 64, 64))
    db = TuningDatabase(tmp_path / "records.jsonl")
    res = tune_kernel(
        kernel,
        TARGET,
        OfflineProposer(),
        TuneOptions(trials=5, batch=5, measure=FAST, finalists=3, retime_rounds=2),
        db=db,
    )
    rec = res.record
    assert rec is not None and rec.load_avg_1m is not None and rec.load_avg_1m >= 0
    assert 1 <= len(rec.finalists_s) <= 3
    assert list(rec.finalists_s) == sorted(rec.finalists_s)
    # the record's figure is the re-timed median of the winner, not its search-time timing
    assert rec.latency_s == rec.finalists_s[0] == res.best_latency_s
    again = TuningDatabase.from_jsonl(db.to_jsonl())
    assert again.lookup(kernel.workload_hash, TARGET) == rec


def test_default_budget_tunes_every_kernel_above_one_percent() -> None:
    mod = W.mlp_module(8, 64, 128, 10)
    kernels = extract_kernels(mod, TARGET)
    ranked = rank_kernels(kernels)
    hot = [k.workload_hash for k, share in ranked if share >= 0.01]
    seen: list[str] = []
    tune_module(
        mod,
        TARGET,
        OfflineProposer,
        TuneOptions(trials=1, batch=1, measure=FAST, finalists=0),
        on_kernel=lambda k, share: seen.append(k.workload_hash),
    )
    assert seen == hot and len(hot) >= 2
