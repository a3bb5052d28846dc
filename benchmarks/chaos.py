"""Question: what does a failing worker cost the clients of ``terrazzo serve``, and does a long run leak?

A small MLP is compiled to a .tzb bundle and served by ``terrazzo serve`` (a subprocess, with a
private TMPDIR) with 1 and then 2 replicas per stage. Closed-loop clients (stock
``tritonclient.grpc``, no retries, 10 s client deadline) send requests for ``--seconds``; after
``--fault-at`` seconds one worker (stage 0, replica 0) is hurt:

- ``kill -9``: SIGKILL;
- ``SIGSTOP``: stopped and never continued (a hung worker; the supervisor must kill it);
- ``10x slow``: stopped and continued in a 90 %/10 % duty cycle (18 ms / 2 ms) until the run
  ends, so it computes at a tenth of its speed but still answers heartbeats.

Every answer is checked against the torch model's output for that input (``wrong`` must be 0).
Per run: requests/s, availability (answered OK / sent), failures, wrong answers, p50/p99 latency
of the OK answers, the span over which requests failed, and the recovery time: from the fault to
the end of the last failed or slow (> 1 s) request, 0 when no request noticed. The soak sends
``--soak`` requests to a 2-replica server and records the gateway's and workers' RSS and the
temp directories present while serving and after SIGTERM.

Run: ``.venv/bin/python benchmarks/chaos.py [--seconds 30] [--soak 10000]``; results go to
``benchmarks/results/chaos.json`` with the CPU model and flags, load averages, versions, commit.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

N_INPUTS = 64


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def build_bundle(out: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 3-layer MLP compiled for a 2-CPU fleet; inputs and torch's outputs for checking."""
    import torch

    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    ).eval()
    example = torch.randn(4, 32)
    path = tz_compile(
        model,
        {"devices": {"cpu": {"count": 2}}},
        "50ms",
        1.0,
        out / "chaos_mlp.tzb",
        example_inputs=(example,),
    )
    xs = torch.randn(N_INPUTS, 4, 32)
    with torch.no_grad():
        ys = torch.stack([model(x) for x in xs])
    return Path(path), xs.numpy(), ys.numpy()


class Served:
    """``terrazzo serve BUNDLE`` in a subprocess with its own TMPDIR."""

    def __init__(self, bundle: Path, replicas: int, tmpdir: Path):
        self.tmpdir = tmpdir
        help_text = subprocess.run(
            [sys.executable, "-m", "terrazzo.cli", "serve", "--help"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        extra = ["--allow-unsigned"] if "--allow-unsigned" in help_text else []
        env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle), "--port", "0"]
            + ["--metrics-port", "0", "--replicas", str(replicas), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        lines: list[str] = []
        while not any(line.startswith("ready") for line in lines):
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"terrazzo serve exited: {''.join(self._stderr)}")
            lines.append(line)
        out = "".join(lines)
        self.port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))
        self.name = re.search(r"serving model '([^']+)'", out).group(1)
        self.pids = {m[0]: int(m[1]) for m in re.findall(r"(stage\d+/r\d+)\s.*?pid (\d+)", out)}

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            if '"event": "infer"' not in line:  # keep restarts and warnings, not access lines
                self._stderr.append(line)

    def log(self) -> str:
        return "".join(self._stderr)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def rss_mib(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def temp_dirs(tmpdir: Path) -> dict[str, int]:
    """Run dirs, worker dirs and extracted bundles present under ``tmpdir``."""
    runs = list(tmpdir.glob("terrazzo-serve-*"))
    return {
        "run_dirs": len(runs),
        "worker_dirs": sum(1 for r in runs for p in r.iterdir() if p.is_dir()),
        "extracted_bundles": len(list(tmpdir.rglob("tzb-*"))),
        "entries": len(list(tmpdir.iterdir())),
    }


def load_loop(
    served: Served,
    xs: np.ndarray,
    ys: np.ndarray,
    seconds: float | None,
    total: int | None,
    clients: int,
) -> tuple[list[tuple[float, float, str]], float, float]:
    """Closed loop; returns (start offset, latency, outcome) per request, t0 and elapsed."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    results: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    counter = [0]
    t0 = time.monotonic()
    end = t0 + seconds if seconds else float("inf")

    def client(seed: int) -> None:
        c = tc.InferenceServerClient(f"127.0.0.1:{served.port}")
        meta = c.get_model_metadata(served.name)
        in_name, out_name = meta.inputs[0].name, meta.outputs[0].name
        rng = np.random.default_rng(seed)
        while time.monotonic() < end:
            with lock:
                if total is not None and counter[0] >= total:
                    break
                counter[0] += 1
            i = int(rng.integers(N_INPUTS))
            inp = tc.InferInput(in_name, list(xs[i].shape), "FP32")
            inp.set_data_from_numpy(xs[i])
            ts = time.monotonic()
            try:
                got = c.infer(served.name, [inp], client_timeout=10).as_numpy(out_name)
                ok = got is not None and np.allclose(got, ys[i], rtol=1e-4, atol=1e-5)
                outcome = "ok" if ok else "wrong"
            except InferenceServerException as e:
                outcome = str(e.status()).replace("StatusCode.", "")
            te = time.monotonic()
            with lock:
                results.append((ts - t0, te - ts, outcome))
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, t0, time.monotonic() - t0


def inject(fault: str, pid: int, at_s: float, until: threading.Event) -> None:
    time.sleep(at_s)
    if fault == "kill -9":
        os.kill(pid, signal.SIGKILL)
    elif fault == "SIGSTOP":
        os.kill(pid, signal.SIGSTOP)
    elif fault == "10x slow":
        try:
            while not until.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.018)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.002)
        except ProcessLookupError:
            return  # killed by the supervisor (it judged the worker hung): reported as restarts


def scenario(
    bundle: Path,
    xs: np.ndarray,
    ys: np.ndarray,
    replicas: int,
    fault: str,
    seconds: float,
    fault_at: float,
    clients: int,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-tmp-") as tmp:
        served = Served(bundle, replicas, Path(tmp))
        load0 = os.getloadavg()
        victim = served.pids["stage0/r0"]
        until = threading.Event()
        injector = threading.Thread(target=inject, args=(fault, victim, fault_at, until))
        injector.start()
        try:
            results, _t0, elapsed = load_loop(served, xs, ys, seconds, None, clients)
        finally:
            until.set()
            injector.join()
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        rc = served.stop()
        log = served.log()
        left = temp_dirs(Path(tmp))
    ok = [r for r in results if r[2] == "ok"]
    failed = [r for r in results if r[2] not in ("ok", "wrong")]
    wrong = sum(r[2] == "wrong" for r in results)
    lat = np.asarray([r[1] for r in ok]) if ok else np.asarray([np.nan])
    noticed = [r for r in results if r[0] + r[1] >= fault_at and (r[2] != "ok" or r[1] > 1.0)]
    recovery = max((r[0] + r[1] - fault_at for r in noticed), default=0.0)
    codes = sorted({r[2] for r in failed})
    return {
        "replicas": replicas,
        "fault": fault,
        "seconds": round(elapsed, 1),
        "req_per_s": round(len(results) / elapsed, 1),
        "requests": len(results),
        "availability": round(len(ok) / max(1, len(results)), 5),
        "failed": len(failed),
        "failure_codes": ",".join(codes) or "-",
        "wrong": wrong,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2),
        "failed_span_s": round(max(r[0] for r in failed) - min(r[0] for r in failed), 3)
        if failed
        else 0.0,
        "recovery_s": round(recovery, 2),
        "restarts_logged": log.count("is restarted"),
        "exit_code": rc,
        "temp_entries_after_stop": left["entries"],
        "loadavg_before": [round(v, 2) for v in load0],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }


def soak(bundle: Path, xs: np.ndarray, ys: np.ndarray, n: int, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-soak-") as tmp:
        served = Served(bundle, 2, Path(tmp))
        pids = list(served.pids.values())
        gw0 = rss_mib(served.proc.pid)
        wk0 = sum(rss_mib(p) or 0.0 for p in pids)
        dirs0 = temp_dirs(Path(tmp))
        first, _, e1 = load_loop(served, xs, ys, None, n // 10, clients)
        gw1 = rss_mib(served.proc.pid)  # after warm-up (first 10 %)
        rest, _, e2 = load_loop(served, xs, ys, None, n - n // 10, clients)
        gw2 = rss_mib(served.proc.pid)
        wk2 = sum(rss_mib(p) or 0.0 for p in pids)
        dirs2 = temp_dirs(Path(tmp))
        rc = served.stop()
        after = temp_dirs(Path(tmp))
    results = first + rest
    ok = [r for r in results if r[2] == "ok"]
    lat = np.asarray([r[1] for r in ok])
    return {
        "requests": len(results),
        "req_per_s": round(len(results) / (e1 + e2), 1),
        "ok": len(ok),
        "wrong": sum(r[2] == "wrong" for r in results),
        "failed": len(results) - len(ok) - sum(r[2] == "wrong" for r in results),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2),
        "gateway_rss_mib_start": round(gw0 or 0, 1),
        "gateway_rss_mib_after_10pct": round(gw1 or 0, 1),
        "gateway_rss_mib_end": round(gw2 or 0, 1),
        "workers_rss_mib_start": round(wk0, 1),
        "workers_rss_mib_end": round(wk2, 1),
        "temp_dirs_start": dirs0,
        "temp_dirs_end": dirs2,
        "temp_dirs_after_stop": after,
        "exit_code": rc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each fault run")
    ap.add_argument("--fault-at", type=float, default=5.0, help="seconds before the fault")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop client threads")
    ap.add_argument("--soak", type=int, default=10_000, help="requests of the soak (0: skip)")
    args = ap.parse_args()
    os.environ.setdefault("COLUMNS", "200")  # rich: the whole table, also when piped

    with tempfile.TemporaryDirectory(prefix="chaos-bundle-") as d:
        t0 = time.perf_counter()
        bundle, xs, ys = build_bundle(Path(d))
        compile_s = time.perf_counter() - t0
        rows = []
        for replicas in (1, 2):
            for fault in ("kill -9", "SIGSTOP", "10x slow"):
                row = scenario(
                    bundle, xs, ys, replicas, fault, args.seconds, args.fault_at, args.clients
                )
                rows.append(row)
                print(
                    f"{replicas} replica(s), {fault}: {row['req_per_s']} req/s, availability "
                    f"{row['availability']}, wrong {row['wrong']}, recovery {row['recovery_s']} s",
                    flush=True,
                )
        soak_row = soak(bundle, xs, ys, args.soak, args.clients) if args.soak else None
    print_table(
        rows,
        [
            "replicas",
            "fault",
            "req_per_s",
            "availability",
            "failed",
            "failure_codes",
            "wrong",
            "p50_ms",
            "p99_ms",
            "failed_span_s",
            "recovery_s",
            "restarts_logged",
            "temp_entries_after_stop",
        ],
        title=f"chaos: {args.seconds:g} s closed loop, {args.clients} clients, fault at "
        f"{args.fault_at:g} s on stage0/r0",
    )
    if soak_row:
        print_table(
            [{"measure": k, "value": str(v)} for k, v in soak_row.items()],
            ["measure", "value"],
            title=f"soak: {args.soak} requests, 2 replicas",
        )
    path = write_result(
        "chaos",
        rows,
        {
            "soak": soak_row,
            "options": vars(args),
            "compile_s": round(compile_s, 1),
            "cpu_flags": cpu_flags(),
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
