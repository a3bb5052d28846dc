"""Bucketed builds: a symbolic-batch model also built at static batch sizes, padded up at run time.

A small MLP (symbolic batch 1..16) compiled with buckets 1, 4 and 8 must answer batches of 1
(a bucket), 3 (padded to 4), 8 (a bucket) and 12 (above the largest bucket: the symbolic build)
exactly as onnxruntime does, and ``inspect`` must list the buckets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from terrazzo.codegen import bucket_sizes, leading_symbol, parse_buckets
from terrazzo.errors import CodegenError

ort = pytest.importorskip("onnxruntime")


def test_bucket_sizes_and_parsing() -> None:
    assert parse_buckets("auto") == "auto"
    assert parse_buckets("8, 1,4,4") == (1, 4, 8)
    assert parse_buckets(None) is None
    assert bucket_sizes("auto", 1, 64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes("auto", 3, 20) == (3, 4, 8, 16, 20)
    assert bucket_sizes((2, 4), 1, 8) == (2, 4)
    with pytest.raises(CodegenError, match="'x' is not a positive integer"):
        parse_buckets("1,x")
    with pytest.raises(CodegenError, match=r"\[32\] lie outside the batch range 1..16"):
        bucket_sizes((4, 32), 1, 16)
    assert leading_symbol([("batch", "")], [("batch", ""), ("batch",)], 2) == "batch"
    assert leading_symbol([("batch", "")], [("batch * 2",)], 1) is None  # an expression
    assert leading_symbol([("batch", "batch")], [("batch",)], 1) is None  # used beyond dim 0
    assert leading_symbol([("", "")], [("batch",)], 1) is None  # a fixed dimension 0


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem
    from tests.unit.frontend.test_dynamic_shapes import _tiny

    d = tmp_path_factory.mktemp("buckets")
    path = _tiny(d / "tiny.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    sla = SLA(latency_s=1.0)
    shapes = {"x": "1..16x16"}
    prob = to_problem(from_onnx(path, shapes=shapes), fleet, sla, 1.0)
    plan = build_plan(prob, np.zeros(len(prob.tasks), dtype=int), "all-cpu", 0.0)
    res = compile_model(path, fleet, sla, out_path=d / "t.tzb", plan=plan, shapes=shapes,
                        include_reference=False, batch_buckets="1,4,8")  # fmt: skip
    return path, Path(res.path)


def test_bucketed_bundle_matches_onnxruntime(bucketed: tuple[Path, Path]) -> None:
    from terrazzo.bundle import open_bundle

    onnx_path, bundle = bucketed
    sess = ort.InferenceSession(str(onnx_path))
    rng = np.random.default_rng(5)
    with open_bundle(bundle) as b:
        stage = b.manifest["stages"][0]
        assert stage["buckets"] == {"symbol": "batch", "sizes": [1, 4, 8]}
        assert b.manifest["plan"]["shape_build"] == "bucketed"
        (runner,) = b.load_stages()
        assert runner.bucket_sizes == (1, 4, 8)
        for n in (1, 3, 8, 12):
            x = rng.standard_normal((n, 16)).astype(np.float32)
            (got,) = b.run({"x": x}, [runner]).values()
            assert got.shape == (n, 16)
            np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        # 1 and 8 ran on their own buckets, 3 on the bucket of 4, 12 on the symbolic build
        assert runner.bucket_calls == {1: 1, 4: 1, 8: 1, 0: 1}
        # The buckets' prepared weights equal the symbolic build's: one copy is kept.
        assert all(r._weights is runner._weights for _, r in runner._buckets)


def test_inspect_reports_buckets(bucketed: tuple[Path, Path]) -> None:
    import os

    _, bundle = bucketed
    code = "import sys; from terrazzo.cli import main; sys.exit(main())"
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps at the terminal width
    r = subprocess.run([sys.executable, "-c", code, "inspect", str(bundle), "--json"],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["stages"][0]["buckets"] == {"symbol": "batch", "sizes": [1, 4, 8]}
    assert info["plan"]["buckets"] == {"0": {"symbol": "batch", "sizes": [1, 4, 8]}}
    r = subprocess.run([sys.executable, "-c", code, "inspect", str(bundle)],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "bucketed: static builds at 1,4,8 plus symbolic" in r.stdout
    assert "stage 0: bucketed: static builds at batch=1,4,8" in r.stdout


def test_tune_buckets_tunes_each_bucket_once_into_the_database(tmp_path: Path) -> None:
    # compile --tune-buckets: each bucket's kernels are tuned into the database before it is
    # built; a second compile with the same database skips the kernels that got a record
    from terrazzo.codegen.tuning import TuningDatabase
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem
    from tests.unit.frontend.test_dynamic_shapes import _tiny

    path = _tiny(tmp_path / "tiny.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    sla, shapes = SLA(latency_s=1.0), {"x": "1..16x16"}
    prob = to_problem(from_onnx(path, shapes=shapes), fleet, sla, 1.0)
    plan = build_plan(prob, np.zeros(len(prob.tasks), dtype=int), "all-cpu", 0.0)
    db_path = tmp_path / "records.jsonl"

    def build(name: str) -> tuple[dict[int, tuple[int, int]], Path]:
        res = compile_model(path, fleet, sla, out_path=tmp_path / name, plan=plan, shapes=shapes,
                            include_reference=False, batch_buckets="8", tune_buckets=2,
                            tuning_db=str(db_path) if db_path.exists() else TuningDatabase(db_path))  # fmt: skip
        (b,) = res.builds
        tuned = {}
        for note in b.notes:  # "batch=8: tuned 3 kernel(s), 1 kept"
            if ": tuned " in note:
                size = int(note.split(":")[0].split("=")[1])
                words = note.split()
                tuned[size] = (int(words[2]), int(words[4]))
        return tuned, Path(res.path)

    first, bundle = build("a.tzb")
    assert set(first) == {8} and first[8][0] >= 1, first
    kept = sum(k for _, k in first.values())
    assert len(TuningDatabase(db_path)) == kept  # saved as it went
    second, _ = build("b.tzb")
    assert {s: n for s, (n, _) in second.items()} == {s: n - k for s, (n, k) in first.items()}
    sess = ort.InferenceSession(str(path))
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    from terrazzo.bundle import open_bundle

    with open_bundle(bundle) as b:
        (got,) = b.run({"x": x}).values()
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
