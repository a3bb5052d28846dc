"""Fault tolerance: kill -9 a worker under closed-loop load; nothing hangs, nothing is wrong."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.runtime import serve
from tests.integration.serving_helpers import chain_plan

pytestmark = pytest.mark.integration


def test_kill_worker_under_load(libs):
    with serve(chain_plan(libs, replicas=2), default_timeout_s=5.0) as server:
        url = f"127.0.0.1:{server.port}"
        stop = threading.Event()
        stats = {"ok": 0, "retried_ok": 0, "failed": 0, "wrong": 0, "hung": 0}
        lock = threading.Lock()

        def client_loop(seed: int) -> None:
            c = tc.InferenceServerClient(url)
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                x = rng.standard_normal(64).astype(np.float32)
                inp = tc.InferInput("x", [64], "FP32")
                inp.set_data_from_numpy(x)
                outcome = "failed"
                for attempt in range(2):  # one client retry on UNAVAILABLE
                    t0 = time.monotonic()
                    try:
                        z = c.infer("toy", [inp], client_timeout=8).as_numpy("z")
                    except InferenceServerException as e:
                        if time.monotonic() - t0 > 6:
                            outcome = "hung"
                            break
                        if e.status() == "StatusCode.UNAVAILABLE" and attempt == 0:
                            continue
                        break
                    outcome = "ok" if attempt == 0 else "retried_ok"
                    if not np.allclose(z, 2 * x + 1, rtol=1e-6):
                        outcome = "wrong"
                    break
                with lock:
                    stats[outcome] += 1
            c.close()

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(6)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(3)
        victim = next(r for r in server.workers() if r["worker"] == "stage0/r0")
        os.kill(victim["handle"].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        while (
            time.monotonic() - t_kill < 2
            and next(r for r in server.workers() if r["worker"] == "stage0/r0")["healthy"]
        ):
            time.sleep(0.01)
        marked_down_s = time.monotonic() - t_kill
        time.sleep(max(0.0, 10 - (time.monotonic() - t_start)))
        stop.set()
        for t in threads:
            t.join(timeout=20)
        elapsed = time.monotonic() - t_start
        assert not any(t.is_alive() for t in threads), "a client thread hung"
        total = sum(stats.values())
        rate = total / elapsed
        assert stats["wrong"] == 0 and stats["hung"] == 0, stats
        assert rate >= 50, f"load too low to mean anything: {rate:.0f} req/s ({stats})"
        assert (stats["ok"] + stats["retried_ok"]) / total >= 0.99, stats
        assert marked_down_s < 1.0
        # the killed worker comes back and takes traffic again
        end = time.monotonic() + 60
        while time.monotonic() < end:
            row = next(r for r in server.workers() if r["worker"] == "stage0/r0")
            if row["healthy"] and row["restarts"] == 1:
                break
            time.sleep(0.1)
        assert row["healthy"] and row["restarts"] == 1
        assert server.gateway.model_ready()
        print(
            f"fault test: {total} requests in {elapsed:.1f} s ({rate:.0f} req/s), {stats}, "
            f"marked down in {marked_down_s * 1e3:.0f} ms"
        )
