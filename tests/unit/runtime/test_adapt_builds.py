"""Which build a re-placed bundle stage runs (``runtime.adapt.builds``), and the policy's
``retune`` and class ``target`` fields. No servers, no TVM builds."""

from __future__ import annotations

import pytest

from terrazzo.errors import ServingError
from terrazzo.runtime.adapt import parse_policy
from terrazzo.runtime.adapt.builds import StageBuilds, target_key
from terrazzo.runtime.plan import RunnerSpec

HOST = {"kind": "llvm", "mcpu": "znver4"}


def _manifest(with_ir: bool) -> dict:
    files = {"host": "stages/0/host.so", "device": "stages/0/device.so", "weights": "w"}
    if with_ir:
        files["ir"] = "stages/0/ir.json"
    return {
        "host_target": HOST,
        "stages": [
            {"index": 0, "target": {"kind": "llvm", "mcpu": "icelake-server"}, "files": files}
        ],
        "tuning": {"count": 0},
    }


def _builds(with_ir: bool, tmp_path) -> StageBuilds:
    targets = {
        "cpu": None,  # the bundle's host build
        "same-as-host": dict(HOST),
        "icelake": {"kind": "llvm", "mcpu": "icelake-server"},  # the bundle's device build
        "haswell": {"kind": "llvm", "mcpu": "haswell"},  # no build in the bundle
    }
    return StageBuilds(_manifest(with_ir), "/nonexistent.tzb", None, targets, tmp_path)


def test_bundle_builds_are_reused(tmp_path):
    b = _builds(True, tmp_path)
    assert b.library(0, "cpu") is None
    assert b.library(0, "same-as-host") is None
    assert b.library(0, "icelake") == "member:stages/0/device.so"
    base = RunnerSpec("terrazzo.runtime.runners:bundle_stage", {"path": "b.tzb", "index": 0})
    assert b.runner(base, 0, "cpu") is base
    assert b.runner(base, 0, "icelake").kwargs["library"] == "member:stages/0/device.so"
    assert b.events == []  # nothing was built


def test_missing_build_without_ir_is_refused_in_one_line(tmp_path):
    b = _builds(False, tmp_path)
    with pytest.raises(ServingError, match=r"stage 0 .* carries no IR"):
        b.library(0, "haswell")


def test_recorded_build_wins(tmp_path):
    b = _builds(False, tmp_path)
    b.record(0, {"kind": "llvm", "mcpu": "haswell"}, "/x/retuned.so", "retune")
    assert b.library(0, "haswell") == "/x/retuned.so"
    assert b.events[-1]["from"] == "retune"
    assert target_key({"mcpu": "a", "kind": "llvm"}) == target_key({"kind": "llvm", "mcpu": "a"})


def test_policy_retune_and_target_fields():
    fleet = {"cpu": {"usd_per_hour": 1.0, "target": {"kind": "llvm", "mcpu": "haswell"}}}
    p = parse_policy({"sla": "100ms", "fleet": fleet, "retune": True})
    assert p.retune is not None and p.retune.every_s == 300.0
    assert p.fleet["cpu"].target == {"kind": "llvm", "mcpu": "haswell"}
    assert parse_policy({"sla": "100ms", "fleet": fleet, "retune": False}).retune is None
    p = parse_policy({"sla": "100ms", "fleet": fleet, "retune": {"every_s": 5, "min_gain": 0.1}})
    assert p.retune is not None and (p.retune.every_s, p.retune.min_gain) == (5, 0.1)
    with pytest.raises(ServingError, match=r"field 'retune.every_s'"):
        parse_policy({"sla": "100ms", "fleet": fleet, "retune": {"every_s": 0}})
    with pytest.raises(ServingError, match=r"field 'retune.budget'"):
        parse_policy({"sla": "100ms", "fleet": fleet, "retune": {"budget": 3}})
