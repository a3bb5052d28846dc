"""Question: what share of the ONNX node conformance tests pass through from_onnx → TVM build → run?

Uses ``onnx/backend/test/data/node/*`` when the installed onnx ships it; the PyPI wheel
ships only the generators, so otherwise the test cases are generated once (same layout:
``model.onnx`` + ``test_data_set_0/{input,output}_*.pb``) into a cache folder. Each test
runs in a worker process with a time limit. Failures are grouped by op and by stage:
import (Terrazzo/TVM importer), build (TVM compile), run (VM), wrong result, timeout.

    .venv/bin/python benchmarks/onnx_conformance.py [--limit N] [--timeout-s 60] [--filter add]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_result  # noqa: E402

RTOL, ATOL = 1e-3, 1e-5


def _shipped_dir() -> Path | None:
    import onnx

    d = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    return d if d.is_dir() and any(d.iterdir()) else None


def _generate(cache: Path) -> Path:
    """Write the node test cases in the standard layout into ``cache`` (once)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    done = cache / ".complete"
    if done.exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for case in node.collect_testcases(None):
        d = cache / case.name
        ds = d / "test_data_set_0"
        ds.mkdir(parents=True, exist_ok=True)
        onnx.save(case.model, str(d / "model.onnx"))
        if not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        for kind, arrays in (("input", inputs), ("output", outputs)):
            for i, a in enumerate(arrays):
                if isinstance(a, np.generic):  # numpy scalars are rank-0 tensors
                    a = np.asarray(a)
                if isinstance(a, np.ndarray):
                    (ds / f"{kind}_{i}.pb").write_bytes(
                        numpy_helper.from_array(a).SerializeToString()
                    )
                else:  # sequences, maps, optionals: not plain tensors; mark the test
                    (d / "NON_TENSOR_IO").write_text("1")
    done.write_text("1")
    return cache


def _op_of(model_path: Path) -> str:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    return ops[0] if len(set(ops)) == 1 else (ops[-1] if ops else "?")


def _run_one(test_dir: str) -> dict[str, Any]:
    """Import, build and run one test; return its outcome (runs inside the worker)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from terrazzo.errors import CodegenError, TerrazzoError
    from terrazzo.frontend import build_cpu, from_onnx

    d = Path(test_dir)
    if (d / "NON_TENSOR_IO").exists():
        return {"stage": "import", "error": "sequence/optional inputs or outputs"}
    ds = d / "test_data_set_0"
    load = lambda p: numpy_helper.to_array(onnx.load_tensor(str(p)))  # noqa: E731
    ins = [load(p) for p in sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
    outs = [
        load(p) for p in sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    ]
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    shapes = {n: tuple(a.shape) for n, a in zip(names, ins, strict=False)}
    try:
        graph = from_onnx(d / "model.onnx", shapes=shapes)
    except TerrazzoError as e:
        return {"stage": "import", "error": str(e)[:300]}
    except Exception as e:
        return {"stage": "import", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    try:
        fn = build_cpu(graph)
    except CodegenError as e:
        return {"stage": "build", "error": str(e)[:300]}
    except Exception as e:
        return {"stage": "build", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    try:
        got = fn({g: a for g, a in zip(graph.inputs, ins, strict=False)})
    except Exception as e:
        return {"stage": "run", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    got_list = list(got.values())
    if len(got_list) != len(outs):
        return {"stage": "wrong", "error": f"{len(got_list)} outputs, expected {len(outs)}"}
    for i, (g, e) in enumerate(zip(got_list, outs, strict=True)):
        if g.shape != e.shape:
            return {"stage": "wrong", "error": f"output {i} shape {g.shape}, expected {e.shape}"}
        if e.dtype.kind in "fc":
            ok = np.allclose(g.astype(e.dtype), e, rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            ok = np.array_equal(g.astype(e.dtype), e)
        if not ok:
            return {
                "stage": "wrong",
                "error": f"output {i} differs beyond rtol={RTOL}, atol={ATOL}",
            }
    return {"stage": "pass", "error": ""}


def _worker(conn: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        test_dir = conn.recv()
        if test_dir is None:
            return
        try:
            conn.send(_run_one(test_dir))
        except BaseException as e:  # keep the worker alive for the next test
            conn.send({"stage": "run", "error": f"{type(e).__name__}: {str(e)[:300]}"})


class _Runner:
    """One worker process; restarted after a timeout or a crash."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        self.conn = parent

    def run(self, test_dir: str, timeout_s: float) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(test_dir)
        # The first test also pays the worker's import time.
        if self.conn.poll(timeout_s):
            try:
                return dict(self.conn.recv())
            except EOFError:
                pass
            self.proc = None
            return {"stage": "run", "error": "worker crashed"}
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return {"stage": "timeout", "error": f"over {timeout_s:.0f} s"}

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="run only the first N tests (0 = all)")
    ap.add_argument("--filter", default="", help="only tests whose name contains this text")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="time limit per test")
    ap.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "terrazzo-onnx-node-tests-v2"),
        help="where generated test cases are kept",
    )
    ap.add_argument("--name", default="onnx_conformance", help="result file stem")
    args = ap.parse_args()

    root = _shipped_dir() or _generate(Path(args.cache))
    tests = sorted(
        p for p in glob.glob(str(root / "*")) if os.path.isfile(os.path.join(p, "model.onnx"))
    )
    if args.filter:
        tests = [t for t in tests if args.filter in os.path.basename(t)]
    if args.limit:
        tests = tests[: args.limit]

    runner = _Runner()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for i, t in enumerate(tests):
            t1 = time.perf_counter()
            res = runner.run(t, args.timeout_s + (30.0 if i == 0 else 0.0))
            op = _op_of(Path(t) / "model.onnx")
            rows.append(
                {
                    "test": os.path.basename(t),
                    "op": op,
                    **res,
                    "time_s": round(time.perf_counter() - t1, 3),
                }
            )
            if (i + 1) % 50 == 0:
                passed = sum(r["stage"] == "pass" for r in rows)
                print(
                    f"[{i + 1}/{len(tests)}] {passed} passed, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    finally:
        runner.close()

    counts = Counter(r["stage"] for r in rows)
    n = len(rows)
    rate = counts["pass"] / n if n else 0.0
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        by_op[r["op"]][r["stage"]] += 1
    op_rows = [
        {
            "op": op,
            "tests": sum(c.values()),
            "pass": c["pass"],
            "import": c["import"],
            "build": c["build"],
            "run": c["run"],
            "wrong": c["wrong"],
            "timeout": c["timeout"],
        }
        for op, c in sorted(by_op.items())
        if c["pass"] != sum(c.values())
    ]
    print_table(
        op_rows,
        ["op", "tests", "pass", "import", "build", "run", "wrong", "timeout"],
        title="ONNX node tests with failures, by op",
    )
    ops_all = len(by_op)
    ops_full = sum(1 for c in by_op.values() if c["pass"] == sum(c.values()))
    summary = {
        "tests": n,
        "passed": counts["pass"],
        "pass_rate": rate,
        "failed_import": counts["import"],
        "failed_build": counts["build"],
        "failed_run": counts["run"],
        "wrong_result": counts["wrong"],
        "timeout": counts["timeout"],
        "ops": ops_all,
        "ops_all_passing": ops_full,
        "wall_s": round(time.perf_counter() - t0, 1),
        "rtol": RTOL,
        "atol": ATOL,
        "source": str(root),
    }
    print_table(
        [summary],
        [
            "tests",
            "passed",
            "pass_rate",
            "failed_import",
            "failed_build",
            "failed_run",
            "wrong_result",
            "timeout",
            "ops_all_passing",
        ],
        title="ONNX node conformance (from_onnx → TVM llvm → Relax VM)",
    )
    path = write_result(
        args.name, rows, extra={"summary": summary, "by_op": op_rows, "options": vars(args)}
    )
    print(f"pass rate {rate:.1%} ({counts['pass']}/{n}); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
