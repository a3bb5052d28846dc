"""Serve options without a server: stage deadlines from the SLA, refused values, the CLI's one line."""

from __future__ import annotations

import pytest

from terrazzo.cli import main
from terrazzo.errors import ServingError
from terrazzo.runtime import RunnerSpec, ServeOptions, ServingPlan, StageSpec, TensorSpec


def _plan(sla_s: float | None) -> ServingPlan:
    return ServingPlan(
        "m",
        (TensorSpec("x", "FP32", (-1,)),),
        (TensorSpec("y", "FP32", (-1,)),),
        (StageSpec(0, "cpu", ("x",), ("y",), RunnerSpec("terrazzo.runtime.runners:identity")),),
        sla_latency_s=sla_s,
    )


@pytest.mark.parametrize(
    ("sla_s", "expected_s"),
    [(0.05, 1.0), (0.3, 3.0), (5.0, 30.0), (None, 30.0)],
)
def test_stage_deadline_is_ten_times_the_sla_within_floor_and_ceiling(sla_s, expected_s):
    assert ServeOptions().stage_timeout(_plan(sla_s)) == pytest.approx(expected_s)


def test_explicit_stage_deadline_wins():
    assert ServeOptions(stage_timeout_s=0.25).stage_timeout(_plan(0.05)) == 0.25


def test_defaults_admit_200_streams():
    opts = ServeOptions()
    assert opts.max_rpcs >= 200 and opts.max_queue >= 200
    assert (opts.gateway_threads or opts.max_rpcs) >= 200


@pytest.mark.parametrize(
    "field", ["max_rpcs", "max_queue", "max_inflight_bytes", "heartbeat_misses", "stage_timeout_s"]
)
def test_non_positive_limits_are_refused_naming_the_option(field):
    with pytest.raises(ServingError, match=field):
        ServeOptions(**{field: 0})


def test_cli_refuses_a_bad_limit_in_one_line(tmp_path, capsys):
    rc = main(["serve", str(tmp_path / "absent.tzb"), "--max-rpcs", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "max_rpcs" in err and "Traceback" not in err
