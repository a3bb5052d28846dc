"""`terrazzo serve BUNDLE --adapt POLICY.yaml` on a real compiled bundle: the controller moves
the compiled stage (planned on t4) onto the far cheaper cpu class while serving; every answer
stays equal to the torch model's."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tritonclient.grpc as tc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_adapt_regroups_a_bundle_and_logs_it(tmp_path):
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()
    x = torch.randn(4, 16)
    path = tz_compile(
        model,
        {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}}},
        "50ms",
        1.0,
        tmp_path / "mlp.tzb",
        example_inputs=(x,),
    )
    with torch.no_grad():
        expect = model(x).numpy()
    log = tmp_path / "decisions.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "sla: 500ms\ninterval_s: 0.3\nwindow_s: 2\ncooldown_s: 0\nmin_samples: 2\n"
        f"decision_log: {log}\n"
        "fleet:\n  cpu: {usd_per_hour: 0.1}\n  t4: {usd_per_hour: 5.0}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(path), "--port", "0",
         "--adapt", str(policy)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()
            assert line, f"server exited: {proc.stderr.read()}"
            lines.append(line)
        out = "".join(lines)
        assert "adapting under" in out
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))
        name = re.search(r"serving model '([^']+)'", out).group(1)
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        meta = c.get_model_metadata(name)
        results = []
        done = threading.Event()
        for _ in range(600):
            inp = tc.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x.numpy())
            got = c.infer(name, [inp]).as_numpy(meta.outputs[0].name)
            results.append(bool(np.allclose(got, expect, rtol=1e-4, atol=1e-5)))
            if log.exists() and log.read_text().strip() and len(results) > 50:
                done.set()
                break
            done.wait(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert done.is_set(), "the controller never changed the plan"
    assert all(results)
    entry = json.loads(log.read_text().splitlines()[0])
    assert "t4" in entry["old"]["text"] and "t4" not in entry["new"]["text"]
