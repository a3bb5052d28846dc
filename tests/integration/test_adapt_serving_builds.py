"""`serve --adapt` on a real compiled bundle, the builds side: (1) the policy's `retune` timer
re-tunes the hottest stage while serving, verifies it, records it in the tuning database and
hot-swaps it (logged); (2) a re-plan onto a class whose target the bundle has no build for
compiles the stage from the IR stored in the bundle at swap time. Every answer is checked
against torch; none may fail."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    tmp = tmp_path_factory.mktemp("adapt_builds")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
    ).eval()
    x = torch.randn(16, 64)
    path = tz_compile(
        model,
        {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}}},
        "50ms",
        1.0,
        tmp / "mlp.tzb",
        example_inputs=(x,),
    )
    with torch.no_grad():
        expect = model(x).numpy()
    return path, x.numpy(), expect


class _Traffic:
    """A client thread sending the example input and checking every answer."""

    def __init__(self, server, x: np.ndarray, expect: np.ndarray):
        self.client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        name = server.plan.model_name
        meta = self.client.get_model_metadata(name)
        self.name, self.inp, self.out = name, meta.inputs[0].name, meta.outputs[0].name
        self.x, self.expect = x, expect
        self.results: list[str] = []
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            i = tc.InferInput(self.inp, list(self.x.shape), "FP32")
            i.set_data_from_numpy(self.x)
            try:
                got = self.client.infer(self.name, [i]).as_numpy(self.out)
                ok = np.allclose(got, self.expect, rtol=1e-4, atol=1e-5)
                self.results.append("ok" if ok else "wrong")
            except Exception as e:  # counted, asserted by the test
                self.results.append(f"failed: {e}")
            self.stop.wait(0.005)

    def __enter__(self) -> _Traffic:
        self.th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.th.join(30)


def _wait(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_retune_timer_swaps_a_verified_build_without_failed_requests(mlp_bundle, tmp_path):
    from terrazzo.runtime.adapt import parse_policy
    from terrazzo.runtime.adapt.serve import attach
    from terrazzo.runtime.server import serve

    path, x, expect = mlp_bundle
    log, db = tmp_path / "decisions.jsonl", tmp_path / "tuning.jsonl"
    policy = parse_policy(
        {"sla": "500ms", "mode": "off", "decision_log": str(log),
         "fleet": {"cpu": {"usd_per_hour": 0.1}, "t4": {"usd_per_hour": 1.0}},
         # min_gain < 0: keep a verified build even when it is not faster, so the swap path
         # is exercised whatever this loaded machine's timings say
         "retune": {"every_s": 0.5, "budget_trials": 4, "max_kernels": 1, "min_gain": -0.5,
                    "database": str(db), "work_dir": str(tmp_path / "work")}}
    )  # fmt: skip
    with serve(path) as server:
        rt = attach(server, policy)
        try:
            with _Traffic(server, x, expect) as traffic:
                swapped = _wait(lambda: "retune" in log.read_text() if log.exists() else False, 50)
                n = len(traffic.results)
                _wait(lambda: len(traffic.results) > n + 20, 10)
        finally:
            rt.stop()
        libs = [p.stage.runner.kwargs.get("library") for p in server.pools]
    assert swapped, (rt.retunes, rt.errors)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    swaps = [e for e in entries if e["reason"] == "retune"]
    first, last = swaps[0]["retune"], swaps[-1]["retune"]
    assert first["verified"] is True and first["kernels_tuned"] >= 1
    assert libs[last["stage"]] == last["library"]  # the stage now runs the re-tuned build
    assert db.exists()  # the kept records went to the tuning database
    assert traffic.results and set(traffic.results) == {"ok"}, [
        r for r in traffic.results if r != "ok"
    ][:3]


def test_replan_builds_the_stage_from_the_bundle_ir(mlp_bundle, tmp_path):
    from terrazzo.runtime.adapt import parse_policy
    from terrazzo.runtime.adapt.serve import attach
    from terrazzo.runtime.server import serve

    path, x, expect = mlp_bundle
    log = tmp_path / "decisions.jsonl"
    # cpu-haswell: an llvm -mcpu=haswell build (AVX2, no AVX-512): a target the bundle has no
    # build for; the controller moves the stage there because it is far cheaper
    policy = parse_policy(
        {"sla": "500ms", "interval_s": 0.3, "window_s": 2, "cooldown_s": 0, "min_samples": 2,
         "decision_log": str(log),
         "fleet": {"t4": {"usd_per_hour": 5.0}, "cpu": {"usd_per_hour": 1.0},
                   "cpu-haswell": {"usd_per_hour": 0.1,
                                   "target": {"kind": "llvm", "mcpu": "haswell"}}}}
    )  # fmt: skip
    with serve(path) as server:
        rt = attach(server, policy)
        try:
            with _Traffic(server, x, expect) as traffic:
                moved = _wait(lambda: bool(rt.decisions), 50)
                n = len(traffic.results)
                _wait(lambda: len(traffic.results) > n + 20, 10)
        finally:
            rt.stop()
        libs = {p.stage.runner.kwargs.get("library") for p in server.pools}
    assert moved, rt.errors
    entry = json.loads(log.read_text().splitlines()[0])
    assert "cpu-haswell" in entry["new"]["text"]
    assert entry["built"], entry
    for built in entry["built"]:
        assert built["target"] == {"kind": "llvm", "mcpu": "haswell"} and built["from"] == "ir"
        assert built["library"] in libs  # the workers run the build made from the IR
    assert {s.device for s in server.plan.stages} == {"cpu-haswell"}
    assert traffic.results and set(traffic.results) == {"ok"}, [
        r for r in traffic.results if r != "ok"
    ][:3]
