"""Question: what share of the ONNX node conformance tests pass through from_onnx → TVM build → run?

Uses ``onnx/backend/test/data/node/*`` when the installed onnx ships it; the PyPI wheel
ships only the generators, so otherwise the test cases are generated once (same layout:
``model.onnx`` + ``test_data_set_0/{input,output}_*.pb``) into a cache folder. Each test
runs in a worker process with a time limit, first through onnxruntime (the reference:
the second denominator is the tests onnxruntime itself passes), then through Terrazzo.
Failures are grouped by the op that failed (named in the importer's error, else the op the
test is about) and by stage: import (Terrazzo/TVM importer), build (TVM compile), run (VM),
wrong result, timeout. Tests onnxruntime fails, and tests with string tensors (Terrazzo
compiles numeric tensors only), are listed as exclusions with their reason.

    .venv/bin/python benchmarks/onnx_conformance.py [--limit N] [--timeout-s 60] [--filter add]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_commit, print_table, write_result  # noqa: E402

RTOL, ATOL = 1e-3, 1e-5
_ORT_MAX_IR_VERSION = 10


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
                if isinstance(a, onnx.TensorProto):  # bfloat16/float8/int4 data comes as protos
                    (ds / f"{kind}_{i}.pb").write_bytes(a.SerializeToString())
                elif isinstance(a, np.ndarray):
                    (ds / f"{kind}_{i}.pb").write_bytes(
                        numpy_helper.from_array(a).SerializeToString()
                    )
                else:  # sequences, optionals: stored as their protos so onnxruntime can run them
                    (d / "NON_TENSOR_IO").write_text("1")
                    try:
                        proto = (
                            numpy_helper.from_list(list(a))
                            if isinstance(a, list)
                            else numpy_helper.from_optional(a)
                        )
                    except Exception:  # noqa: BLE001 - a map or another odd value: no data
                        continue
                    (ds / f"{kind}_{i}.seq").write_bytes(proto.SerializeToString())
    done.write_text("1")
    return cache


_OP_IN_ERROR = (
    re.compile(r"unsupported operators in [^:]*: ([\w.]+) \(x\d+"),
    re.compile(r"at op ([\w.]+)"),
    re.compile(r"ONNX ([A-Z][\w.]+)[: ]"),
)


def _op_of(model_path: Path, test: str, error: str) -> str:
    """The op a failure belongs to: the one the error names, else the op the test is about.

    The test's op is the node type whose name the test name spells (``test_reduce_sum_...``
    → ReduceSum), else the only node type, else the last node that is not a Constant.
    """
    import onnx

    for pat in _OP_IN_ERROR:
        m = pat.search(error)
        if m:
            return m.group(1)
    model = onnx.load(str(model_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    if len(set(ops)) == 1:
        return ops[0]
    flat = test.removeprefix("test_").replace("_", "").lower()
    named = [o for o in set(ops) if flat.startswith(o.lower())]
    if named:
        return max(named, key=len)
    rest = [o for o in ops if o != "Constant"]
    return rest[-1] if rest else (ops[-1] if ops else "?")


def _load_data(ds: Path, kind: str) -> list[Any]:
    """Inputs or outputs of a test data set in order: arrays, lists (sequences) or None."""
    import onnx
    from onnx import numpy_helper

    found: dict[int, Any] = {}
    for p in ds.glob(f"{kind}_*.pb"):
        found[int(p.stem.split("_")[1])] = numpy_helper.to_array(onnx.load_tensor(str(p)))
    for p in ds.glob(f"{kind}_*.seq"):
        raw = p.read_bytes()
        seq = onnx.SequenceProto()
        seq.ParseFromString(raw)
        if seq.elem_type:  # a SequenceProto parses from an OptionalProto too, but empty
            found[int(p.stem.split("_")[1])] = numpy_helper.to_list(seq)
            continue
        opt = onnx.OptionalProto()
        opt.ParseFromString(raw)
        found[int(p.stem.split("_")[1])] = numpy_helper.to_optional(opt)
    return [found[k] for k in sorted(found)]


def _close(got: Any, want: Any) -> bool:
    import numpy as np

    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_close(g, w) for g, w in zip(got, want, strict=True))
        )
    if want is None or got is None:
        return want is None and got is None
    got = np.asarray(got)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(want.dtype), want, rtol=RTOL, atol=ATOL, equal_nan=True))
    return bool(np.array_equal(got.astype(want.dtype), want))


def _run_ort(d: Path, ins: list[Any], outs: list[Any]) -> str:
    """Run the test through onnxruntime; ``""`` when it passes, else why not (one line)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        import onnx

        model = onnx.load(str(d / "model.onnx"), load_external_data=False)
        # The generators stamp the newest IR version, which onnxruntime may not know yet;
        # the ops are the same, so offer it the newest IR version it reads.
        model.ir_version = min(model.ir_version, _ORT_MAX_IR_VERSION)
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # noqa: BLE001 - any load failure is the reason
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = re.sub(r"^.*?Load model from \S+ failed:", "", msg).strip()
        opset = re.search(r"Opset (\d+) is", msg)
        if opset:
            return f"onnxruntime does not support opset {opset.group(1)} yet"
        if "NOT_IMPLEMENTED" in msg or "Could not find an implementation" in msg:
            return "onnxruntime has no kernel: " + msg.split("Could not find")[-1][:160]
        return "onnxruntime cannot load it: " + msg[:160]
    try:
        feed = {i.name: a for i, a in zip(sess.get_inputs(), ins, strict=False)}
        got = sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return "onnxruntime fails at run time: " + msg[:160]
    if len(got) != len(outs) or not all(_close(g, w) for g, w in zip(got, outs, strict=True)):
        return "onnxruntime's result differs from the test's expected output"
    return ""


def _run_one(test_dir: str) -> dict[str, Any]:
    """Import, build and run one test; return its outcome (runs inside the worker)."""
    import numpy as np

    d = Path(test_dir)
    ds = d / "test_data_set_0"
    ins, outs = _load_data(ds, "input"), _load_data(ds, "output")
    if not outs:
        return {
            "ort": "",
            "exclude": "no test data stored (values the generator gives as non-arrays)",
            "stage": "import",
            "error": "no test data",
        }
    base: dict[str, Any] = {"ort": _run_ort(d, ins, outs), "exclude": ""}
    if not base["ort"] and any(
        isinstance(a, np.ndarray) and a.dtype.kind in "OSU" for a in [*ins, *outs]
    ):
        base["exclude"] = "string tensors: Terrazzo compiles numeric tensors only"
    elif base["ort"]:
        base["exclude"] = base["ort"]
    res = _run_terrazzo(d, ins, outs)
    retry = res["stage"] == "import" or (res.get("guarded") and res["stage"] != "pass")
    if retry and not (d / "NON_TENSOR_IO").exists():
        # Would it pass with the integer inputs given as constants (a specialisation)?
        again = _run_terrazzo(d, ins, outs, constant_ints=True)
        res["pass_with_constant_int_inputs"] = again["stage"] == "pass"
    return {**base, **res}


def _run_terrazzo(
    d: Path, ins: list[Any], outs: list[Any], constant_ints: bool = False
) -> dict[str, Any]:
    """Import, build, run, compare; with ``constant_ints`` the small integer inputs (shapes,
    axes, sizes, pads), and float inputs read only at shape positions (Resize's scales), are
    given to the importer as constants (a specialisation; skipped when there are none)."""
    import numpy as np
    import onnx

    from terrazzo.errors import CodegenError, TerrazzoError
    from terrazzo.frontend import GuardedGraph, build_cpu, from_onnx

    if (d / "NON_TENSOR_IO").exists():
        return {"stage": "import", "error": "sequence/optional inputs or outputs"}
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    frozen: dict[str, Any] = {}
    if constant_ints:
        from terrazzo.frontend.onnx_fold import shape_only_inputs

        shape_keys = shape_only_inputs(model)  # float scales/roi of Resize too
        frozen = {
            n: a
            for n, a in zip(names, ins, strict=False)
            if isinstance(a, np.ndarray)
            and a.size <= 64
            and (a.dtype.kind in "iu" or (n in shape_keys and a.dtype.kind == "f"))
        }
        if not frozen:
            return {"stage": "skip", "error": "no integer inputs"}
    ins = [a for n, a in zip(names, ins, strict=False) if n not in frozen]
    names = [n for n in names if n not in frozen]
    shapes = {n: tuple(a.shape) for n, a in zip(names, ins, strict=False)}
    try:
        # strict: inputs that give shapes/axes/sizes stay inputs; where the plain import
        # cannot keep them as run-time tensors they become guards (a build per value, made
        # at the call with the call's values: onnx_guards)
        graph = from_onnx(
            d / "model.onnx", shapes=shapes, constant_inputs=frozen, guards=not constant_ints
        )
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
    guarded = isinstance(graph, GuardedGraph)
    try:
        got = fn({g: a for g, a in zip(graph.inputs, ins, strict=False)})
    except Exception as e:
        # a guarded graph imports and builds its specialisation at the call: its failures
        # count at the stage they happened in
        stage = "run"
        if guarded and isinstance(e, CodegenError):
            stage = "build"
        elif guarded and isinstance(e, TerrazzoError):
            stage = "import"
        return {"stage": stage, "error": f"{type(e).__name__}: {str(e)[:300]}", "guarded": guarded}
    return {**_compare(list(got.values()), outs), "guarded": guarded}


def _compare(got_list: list[Any], outs: list[Any]) -> dict[str, Any]:
    """``pass`` when every output matches the expected one (shape, then values)."""
    import numpy as np

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
            res = {"stage": "wrong", "error": f"output {i} differs beyond rtol={RTOL}, atol={ATOL}"}
            if e.dtype == np.float16 and g.size:
                # rtol 1e-3 is just under two fp16 ulps (2**-9 relative): say how far it is
                res["fp16_ulps"] = _max_ulps(g.astype(np.float16), e)
                res["error"] += f" (at most {res['fp16_ulps']} fp16 ulps from the expected)"
            return res
    return {"stage": "pass", "error": ""}


def _max_ulps(got: Any, want: Any) -> int:
    """Largest distance in units in the last place between two fp16 arrays (NaNs equal)."""
    import numpy as np

    def ordered(a: Any) -> Any:
        bits = a.view(np.int16).astype(np.int32)
        return np.where(bits < 0, -32768 - bits, bits)

    both_nan = np.isnan(got) & np.isnan(want)
    d = np.abs(ordered(got) - ordered(want))
    return int(np.max(np.where(both_nan, 0, d)))


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
        default=os.path.join(tempfile.gettempdir(), "terrazzo-onnx-node-tests-v4"),
        help="where generated test cases are kept",
    )
    ap.add_argument("--name", default="onnx_conformance", help="result file stem")
    ap.add_argument(
        "--rerun-failed",
        default="",
        help="a previous result JSON: run only its failures among the tests onnxruntime passes; "
        "its other rows are carried over (marked 'carried') so the summary covers every test",
    )
    args = ap.parse_args()

    root = _shipped_dir() or _generate(Path(args.cache))
    tests = sorted(
        p for p in glob.glob(str(root / "*")) if os.path.isfile(os.path.join(p, "model.onnx"))
    )
    if args.filter:
        tests = [t for t in tests if args.filter in os.path.basename(t)]
    if args.limit:
        tests = tests[: args.limit]

    # A full run takes over half an hour: record what it started from (the code the workers
    # import, which PYTHONPATH may point at a frozen copy while the work tree moves on).
    import terrazzo

    started = {
        "commit_at_start": git_commit(),
        "terrazzo_imported_from": str(Path(terrazzo.__file__).resolve().parent),
        "load_avg_at_start": list(os.getloadavg()),
    }
    runner = _Runner()
    rows: list[dict[str, Any]] = []
    if args.rerun_failed:
        import json

        prev = json.loads(Path(args.rerun_failed).read_text())
        # passes, and tests onnxruntime itself fails (out of the headline denominator)
        keep = {r["test"]: r for r in prev["rows"] if r["stage"] == "pass" or r.get("exclude")}
        rows = [{**r, "carried": prev.get("commit", "?")} for r in keep.values()]
        rows = [r for r in rows if any(os.path.basename(t) == r["test"] for t in tests)]
        tests = [t for t in tests if os.path.basename(t) not in keep]
    t0 = time.perf_counter()
    try:
        for i, t in enumerate(tests):
            t1 = time.perf_counter()
            res = runner.run(t, args.timeout_s + (30.0 if i == 0 else 0.0))
            op = _op_of(Path(t) / "model.onnx", os.path.basename(t), str(res.get("error", "")))
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
    kept = [r for r in rows if not r.get("exclude")]
    kept_pass = sum(r["stage"] == "pass" for r in kept)
    kept_rate = kept_pass / len(kept) if kept else 0.0
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    for r in kept:
        by_op[r["op"]][r["stage"]] += 1
    op_rows = [
        {
            "op": op,
            "failed": sum(c.values()) - c["pass"],
            "tests": sum(c.values()),
            "pass": c["pass"],
            "import": c["import"],
            "build": c["build"],
            "run": c["run"],
            "wrong": c["wrong"],
            "timeout": c["timeout"],
        }
        for op, c in sorted(
            by_op.items(), key=lambda kv: (kv[1]["pass"] - sum(kv[1].values()), kv[0])
        )
        if c["pass"] != sum(c.values())
    ]
    print_table(
        op_rows[:40],
        ["op", "failed", "tests", "pass", "import", "build", "run", "wrong", "timeout"],
        title="Failures among the tests onnxruntime passes, by the op that failed (top 40)",
    )
    excl: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.get("exclude"):
            excl[re.sub(r"\s+", " ", r["exclude"])[:120]].append(r["test"])
    exclusions = [
        {"reason": k, "count": len(v), "tests": v}
        for k, v in sorted(excl.items(), key=lambda kv: -len(kv[1]))
    ]
    print_table(
        [{"count": e["count"], "reason": e["reason"], "e.g.": e["tests"][0]} for e in exclusions],
        ["count", "reason", "e.g."],
        title="Excluded from the onnxruntime-passing denominator",
    )
    ops_all = len(by_op)
    ops_full = sum(1 for c in by_op.values() if c["pass"] == sum(c.values()))
    summary = {
        "tests": n,
        "passed": counts["pass"],
        "pass_rate": rate,
        "ort_passing_tests": len(kept),
        "passed_of_ort_passing": kept_pass,
        "pass_rate_of_ort_passing": kept_rate,
        "excluded": n - len(kept),
        "passed_of_ort_passing_via_guards": sum(
            r["stage"] == "pass" and bool(r.get("guarded")) for r in kept
        ),
        "passed_of_ort_passing_with_constant_int_inputs": kept_pass
        + sum(bool(r.get("pass_with_constant_int_inputs")) for r in kept),
        "failed_import": counts["import"],
        "failed_build": counts["build"],
        "failed_run": counts["run"],
        "wrong_result": counts["wrong"],
        "timeout": counts["timeout"],
        "ops": ops_all,
        "ops_all_passing": ops_full,
        "wall_s": round(time.perf_counter() - t0, 1),
        "carried_rows": sum(bool(r.get("carried")) for r in rows),
        **started,
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
            "ort_passing_tests",
            "passed_of_ort_passing",
            "pass_rate_of_ort_passing",
            "passed_of_ort_passing_via_guards",
            "passed_of_ort_passing_with_constant_int_inputs",
            "failed_import",
            "failed_build",
            "failed_run",
            "wrong_result",
            "timeout",
        ],
        title="ONNX node conformance (from_onnx → TVM llvm → Relax VM)",
    )
    path = write_result(
        args.name,
        rows,
        extra={
            "summary": summary,
            "by_op": op_rows,
            "exclusions": exclusions,
            "options": vars(args),
        },
    )
    print(
        f"pass rate {rate:.1%} of all tests ({counts['pass']}/{n}); "
        f"{kept_rate:.1%} of the tests onnxruntime passes ({kept_pass}/{len(kept)}); wrote {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
