"""Cost attribution (issue 15, item 5): every response carries ``cost_usd`` (device-seconds it used
× the plan's price of the stage's class), and /metrics shows charged and provisioned USD labelled
with the planned device class and the device actually running the stage."""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from terrazzo.runtime import ServingPlan, serve
from terrazzo.runtime.cost import device_prices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    fleet = {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}}}
    out = tmp_path_factory.mktemp("cost") / "m.tzb"
    return Path(
        tz_compile(model.eval(), fleet, "50ms", 1.0, out, example_inputs=(torch.randn(2, 4),))
    )


def _samples(page: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", page, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out.append((labels, float(m.group(2))))
    return out


def test_cost_per_request_and_per_hour_with_planned_and_actual_device(bundle: Path) -> None:
    from terrazzo.bundle import open_bundle

    with open_bundle(bundle, allow_unsigned=True) as b:
        prices = device_prices(b.manifest)
    plan = ServingPlan.from_bundle(bundle, allow_unsigned=True)
    assert plan.usd_per_hour_by_device == prices and all(p > 0 for p in prices.values())
    with serve(plan, metrics_port=0, allow_unsigned=True) as server:
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.ones((2, 4), np.float32)
        inp = tc.InferInput(plan.inputs[0].name, [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        costs = []
        for _ in range(5):
            r = c.infer(plan.model_name, [inp])
            costs.append(r.get_response().parameters["cost_usd"].double_param)
        c.close()
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
    assert all(cost > 0 for cost in costs)
    charged = _samples(page, "terrazzo_cost_usd_total")
    busy = _samples(page, "terrazzo_stage_device_busy_seconds_total")
    hourly = _samples(page, "terrazzo_provisioned_usd_per_hour")
    assert len(charged) == len(plan.stages) == len(hourly)
    assert sum(v for _, v in charged) == pytest.approx(sum(costs), rel=1e-9)
    for (labels, usd), (_, seconds) in zip(charged, busy, strict=True):
        stage = plan.stages[int(labels["stage"])]
        assert labels["model"] == plan.model_name and labels["version"] == plan.version
        assert labels["device_class"] == stage.device
        assert usd == pytest.approx(seconds * prices[stage.device] / 3600, rel=1e-9)
        # without a GPU every stage (t4 ones included) really runs on the host CPU
        if shutil.which("nvidia-smi") is None:
            assert labels["device"].startswith("cpu: ")
    assert {labels["stage"]: v for labels, v in hourly} == {
        str(s.index): pytest.approx(prices[s.device] * s.replicas) for s in plan.stages
    }
