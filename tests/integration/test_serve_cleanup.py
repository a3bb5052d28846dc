"""`terrazzo serve` leaks nothing: no extracted bundle survives SIGTERM, a killed worker, a killed
gateway (swept by the next start); the gateway's memory comes back after large requests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.runtime.rundir import RunDir, sweep_stale

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()
    x = torch.randn(4, 16)
    path = tz_compile(
        model,
        {"devices": {"cpu": {"count": 2}}},
        "50ms",
        1.0,
        tmp_path_factory.mktemp("bundle") / "mlp.tzb",
        example_inputs=(x,),
    )
    with torch.no_grad():
        return path, x.numpy(), model(x).numpy()


class _Cli:
    """`terrazzo serve BUNDLE` in a subprocess whose temp dir is ``tmpdir``."""

    def __init__(self, bundle_path: Path, tmpdir: Path, *extra: str):
        env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle_path), "--port", "0"]
            + ["--metrics-port", "0", "--replicas", "2", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines = []
        while not any(line.startswith("ready") for line in lines):
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")
            lines.append(line)
        self.out = "".join(lines)
        self.port = int(re.search(r"on 127\.0\.0\.1:(\d+)", self.out).group(1))
        self.name = re.search(r"serving model '([^']+)'", self.out).group(1)
        self.worker_pids = [int(p) for p in re.findall(r"pid (\d+)", self.out)]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _infer_ok(port: int, name: str, x: np.ndarray, expected: np.ndarray) -> None:
    c = tc.InferenceServerClient(f"127.0.0.1:{port}")
    meta = c.get_model_metadata(name)
    inp = tc.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = c.infer(name, [inp], client_timeout=30).as_numpy(meta.outputs[0].name)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    c.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _everything(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_sigterm_and_killed_worker_leave_no_extracted_bundle(bundle, tmp_path):
    import psutil

    path, x, expected = bundle
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli = _Cli(path, tmp)
    try:
        (run_dir,) = tmp.glob("terrazzo-serve-*")
        worker_dirs = sorted(p for p in run_dir.iterdir() if p.is_dir())
        assert len(worker_dirs) == len(cli.worker_pids) == 2
        for d in worker_dirs:  # each worker's extracted bundle lives in its own dir
            assert list(d.glob("tzb-*/manifest.json")) or list(d.glob("tzb-*")), _everything(d)
        _infer_ok(cli.port, cli.name, x, expected)
        # SIGKILL a worker: its directory goes with it, the restarted one gets a fresh one
        victim = cli.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            now = sorted(p for p in run_dir.iterdir() if p.is_dir())
            if len(now) == 2 and now != worker_dirs:
                break
            time.sleep(0.1)
        now = sorted(p for p in run_dir.iterdir() if p.is_dir())
        assert len(now) == 2 and worker_dirs[0] not in now, (worker_dirs, now)
        end = time.monotonic() + 30
        while True:  # the restarted worker serves again
            try:
                _infer_ok(cli.port, cli.name, x, expected)
                break
            except InferenceServerException:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        # memory: 8 concurrent 48 MiB requests, then the gateway's RSS comes back down
        gw = psutil.Process(cli.proc.pid)
        rss0 = gw.memory_info().rss
        big = np.zeros((48 << 20) // 4, np.float32)

        def one() -> None:
            c = tc.InferenceServerClient(f"127.0.0.1:{cli.port}")
            inp = tc.InferInput("x", [big.size], "FP32")
            inp.set_data_from_numpy(big)
            try:
                c.infer(cli.name, [inp], client_timeout=60)
            except InferenceServerException as e:  # wrong shape or over budget, by design
                assert e.status() in (
                    "StatusCode.INVALID_ARGUMENT",
                    "StatusCode.RESOURCE_EXHAUSTED",
                ), e
            c.close()

        peak = [rss0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], gw.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sampling.set()
        sampler.join()
        time.sleep(1.0)  # the supervisor trims the heap once nothing is in flight
        rss1 = gw.memory_info().rss
        print(
            f"gateway RSS {rss0 / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} MiB, "
            f"after {rss1 / 2**20:.0f} MiB (8 x 48 MiB requests)"
        )
        assert peak[0] - rss0 > 96 << 20  # the requests were really buffered
        assert rss1 - rss0 < 64 << 20, (rss0, rss1)
        err = cli.stop()
        assert "Traceback" not in err
        assert _everything(tmp) == [], _everything(tmp)
        assert all(_gone(p) for p in cli.worker_pids)
    finally:
        cli.kill()


def test_gateway_sigkill_is_swept_by_the_next_start(bundle, tmp_path):
    path, x, expected = bundle
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first = _Cli(path, tmp)
    try:
        (stale,) = tmp.glob("terrazzo-serve-*")
        os.kill(first.worker_pids[0], signal.SIGSTOP)  # a hung worker must not outlive it either
        first.proc.kill()  # SIGKILL: no handler runs
        first.proc.wait()
        end = time.monotonic() + 10  # the workers die with the fork server, which dies with it
        while time.monotonic() < end and not all(_gone(p) for p in first.worker_pids):
            time.sleep(0.1)
        assert all(_gone(p) for p in first.worker_pids)
        assert stale.exists()  # left behind, as SIGKILL allows nothing else
        second = _Cli(path, tmp)
        try:
            assert not stale.exists()
            assert len(list(tmp.glob("terrazzo-serve-*"))) == 1
            _infer_ok(second.port, second.name, x, expected)
            err = second.stop()
            assert "removed 1 run directory" in err and str(stale) in err, err
        finally:
            second.kill()
        assert _everything(tmp) == [], _everything(tmp)
    finally:
        first.kill()


def test_sweep_keeps_live_owners_and_unowned_fresh_dirs(tmp_path):
    live = RunDir(tmp_path)  # owned by this (live) process
    fresh = tmp_path / "terrazzo-serve-1-being-created"
    fresh.mkdir()  # no owner file yet: young, left alone
    dead = tmp_path / "terrazzo-serve-2-dead"
    dead.mkdir()
    (dead / "owner.json").write_text('{"pid": 2147483000, "start": "1.000"}')
    (dead / "stage0-r0-x").mkdir()
    reused = tmp_path / "terrazzo-serve-3-reused"
    reused.mkdir()  # our pid, another start time: a reused pid, not the owner
    (reused / "owner.json").write_text(f'{{"pid": {os.getpid()}, "start": "1.000"}}')
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert live.path.exists() and fresh.exists()
    live.remove()
    assert not live.path.exists()
