"""Agent programs: branch/join/map/while in the spec, bad specs refused at ``ir``/``plan`` time, and the runtime's gating and concurrency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from terrazzo.cli import main
from terrazzo.frontend.agent_flow import evaluate, text_value, to_text

TOOLS = """
import threading, time
def classify(x):
    return "weather" if "rain" in x else "math"
def weather(x):
    return "sunny, 21C"
def calc(x):
    return str(len(x))
def shout(x):
    return x.upper()
def words(x):
    return x.split()
def length(w):
    return str(len(w))
def boom(x):
    raise RuntimeError("backend down")
SPANS = {}
def slow_a(x):
    t0 = time.perf_counter(); time.sleep(0.3); SPANS["a"] = (t0, time.perf_counter()); return "a"
def slow_b(x):
    t0 = time.perf_counter(); time.sleep(0.3); SPANS["b"] = (t0, time.perf_counter()); return "b"
"""

FLEET = {"devices": {"cpu": {"count": 8}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}

ROUTER = {
    "name": "router",
    "nodes": [
        {"type": "input", "name": "q", "dtype": "string"},
        {"type": "tool", "name": "kind", "function": "tools.py:classify", "output": {"dtype": "string"}},
        {"type": "branch", "name": "route", "default": "math",
         "arms": {"weather": {"of": "text", "op": "eq", "value": "weather"}},
         "probabilities": {"weather": 0.25}},
        {"type": "tool", "name": "wx", "function": "tools.py:weather", "output": {"dtype": "string"}},
        {"type": "tool", "name": "calc", "function": "tools.py:calc", "output": {"dtype": "string"}},
        {"type": "join", "name": "merged"},
        {"type": "tool", "name": "loud", "function": "tools.py:shout", "output": {"dtype": "string"}},
        {"type": "map", "name": "lens", "function": "tools.py:length", "max_parallel": 4},
        {"type": "tool", "name": "split", "function": "tools.py:words", "output": {"dtype": "string"}},
        {"type": "tool", "name": "broken", "function": "tools.py:boom", "output": {"dtype": "string"}},
        {"type": "tool", "name": "a", "function": "tools.py:slow_a", "output": {"dtype": "string"}},
        {"type": "tool", "name": "b", "function": "tools.py:slow_b", "output": {"dtype": "string"}},
        {"type": "join", "name": "both", "mode": "all"},
        {"type": "output", "name": "answer"},
        {"type": "output", "name": "lengths"},
        {"type": "output", "name": "error"},
        {"type": "output", "name": "parallel"},
    ],
    "edges": ["q -> kind", "kind -> route", "route.weather -> wx", "route.math -> calc",
              "wx -> merged", "calc -> merged", "merged -> loud", "loud -> answer",
              "q -> split", "split -> lens", "lens -> lengths", "q -> broken", "broken -> error",
              "q -> a", "q -> b", "a -> both", "b -> both", "both -> parallel"],
}  # fmt: skip


def _write(tmp: Path, spec: dict, name: str = "prog.yaml") -> Path:
    (tmp / "tools.py").write_text(TOOLS)
    p = tmp / name
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


@pytest.mark.parametrize(
    ("cond", "value", "want"),
    [
        ({"of": "first", "op": "lt", "value": 128}, np.array([65, 200]), True),
        ({"of": "first", "op": "lt", "value": 128}, np.array([200]), False),
        ({"of": "text", "op": "eq", "value": "FINAL"}, text_value(" FINAL "), True),
        ({"of": "text", "op": "startswith", "value": "error"}, text_value("error: x"), True),
        ({"of": "text", "op": "contains", "value": "hi"}, np.frombuffer(b"ohio", np.uint8), True),
        ({"of": "argmax", "op": "eq", "value": 2}, np.array([[0.1, 0.2, 0.9]]), True),
        ({"of": "argmax", "op": "in", "value": [0, 1]}, np.array([[0.1, 0.2, 0.9]]), False),
        ({"of": "len", "op": "ge", "value": 3}, np.zeros(2), False),
        ({"of": "first", "op": "gt", "value": 0}, np.zeros(0), False),  # skipped arm: empty
    ],
)
def test_conditions_test_tokens_text_labels_and_lengths(cond, value, want):
    assert evaluate(cond, value) is want


def test_to_text_reads_tokens_and_bytes():
    assert to_text(np.array([104, 105, 0, 0])) == "hi"
    assert to_text(text_value(["a", "b"])) == "a\nb"


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    from terrazzo.pipeline import compile_agent
    from terrazzo.runtime.agent_plan import agent_serving_plan

    tmp = tmp_path_factory.mktemp("router")
    spec = _write(tmp, ROUTER)
    (tmp / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
    res = compile_agent(spec, tmp / "fleet.yaml", "2s", tmp / "router.tzb")
    return res, agent_serving_plan(res.path)


@pytest.mark.parametrize("concurrent", [False, True])
def test_branch_join_map_run_and_errors_are_values(router, concurrent):
    from terrazzo.runtime.agent_plan import LocalAgent

    _, plan = router
    agent = LocalAgent(plan, concurrent=concurrent)
    try:
        wet = agent({"q": text_value("will it rain today")})
        dry = agent({"q": text_value("2+2")})
    finally:
        agent.close()
    assert to_text(wet["answer"]) == "SUNNY, 21C"
    assert wet["calc"].size == 0  # the math arm did not run
    assert to_text(dry["answer"]) == "4"  # len("math"): the branch passes its input on
    assert dry["wx"].size == 0
    assert [int(x) for x in wet["lengths"]] == [4, 2, 4, 5]  # map over the words
    assert to_text(wet["error"]) == "error: RuntimeError: backend down"
    assert sorted(to_text(wet["parallel"]).split()) == ["a", "b"]


def test_independent_branches_overlap_when_concurrent(router):
    """The two 0.3 s tools run at the same time: their execution intervals intersect."""
    import sys

    from terrazzo.runtime.agent_plan import LocalAgent

    _, plan = router
    agent = LocalAgent(plan, concurrent=True)
    try:
        agent({"q": text_value("x")})
    finally:
        agent.close()
    mod = next(
        m
        for n, m in sys.modules.items()
        if n.startswith("_terrazzo_agent_tools_") and hasattr(m, "SPANS")
    )
    (a0, a1), (b0, b1) = mod.SPANS["a"], mod.SPANS["b"]
    assert a0 < b1 and b0 < a1


def test_branch_probability_weights_the_plan_and_gates_reach_the_bundle(router):
    res, plan = router
    from terrazzo.bundle import open_bundle

    with open_bundle(res.path) as b:
        nodes = {n.name: n for n in b.agent.nodes}
    assert [tuple(g) for g in nodes["wx"].gates] == [("route", "weather")]
    assert [tuple(g) for g in nodes["calc"].gates] == [("route", "math")]
    assert nodes["loud"].gates == [] and nodes["merged"].gates == []
    gated = [st for st in plan.stages if "route.arm" in st.inputs]
    assert {st.outputs[0] for st in gated} >= {"wx", "calc", "merged"}


BAD = [
    ("cycle", {"edges": ["q -> t", "t -> u", "u -> t", "u -> out"]},
     "node 't' field 'edges': the edges form a cycle without a bound"),
    ("unknown", {"nodes_extra": [{"type": "telepathy", "name": "z"}]},
     "node 'z': unknown node type"),
    ("text_into_tensor", {"nodes_extra": [
        {"type": "model", "name": "m", "onnx": "none.onnx"}],
      "edges": ["q -> t", "t -> u", "u -> m", "m -> out"]},
     "node 'm' field 'inputs': 'u' is text (dtype string) but the model takes float tensors"),
    ("from_nowhere", {"edges": ["q -> t", "t -> u"]},
     "node 'out' field 'edges': an output node needs exactly one incoming edge, found 0"),
    ("both_arms", {"nodes_extra": [
        {"type": "branch", "name": "r", "arms": {"yes": {"value": 1}}, "default": "no"},
        {"type": "tool", "name": "v", "function": "tools.py:shout"},
        {"type": "tool", "name": "w", "function": "tools.py:shout"},
        {"type": "tool", "name": "mix", "function": "tools.py:shout"}],
      "edges": ["q -> r", "r.yes -> v", "r.no -> w", "v -> mix", "w -> mix", "mix -> out",
                "q -> t", "t -> u"]},
     "node 'mix' field 'inputs': reads arms ['no', 'yes'] of branch 'r'"),
    ("unbounded_loop", {"loops": [{"name": "again", "from": "u", "to": "t"}]},
     "loops.0.max_iterations: Field required"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["ir", "plan"])
def test_bad_programs_are_refused_in_one_line_naming_node_and_field(
    tmp_path, capsys, case, change, message, command
):
    spec = {
        "name": "bad",
        "nodes": [
            {"type": "input", "name": "q", "dtype": "string"},
            {"type": "tool", "name": "t", "function": "tools.py:shout", "output": {"dtype": "string"}},
            {"type": "tool", "name": "u", "function": "tools.py:shout", "output": {"dtype": "string"}},
            {"type": "output", "name": "out"},
        ],
        "edges": ["q -> t", "t -> u", "u -> out"],
    }  # fmt: skip
    spec["nodes"] += change.get("nodes_extra", [])
    for k in ("edges", "loops"):
        if k in change:
            spec[k] = change[k]
    path = _write(tmp_path, spec)
    argv = [command, str(path)]
    if command == "plan":
        (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
        argv += ["--fleet", str(tmp_path / "fleet.yaml"), "--sla", "2s"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_while_condition_and_gates_print_in_the_agent_dialect(tmp_path):
    from terrazzo.frontend.agent import load_agent
    from terrazzo.ir.dialect import parse_graph, print_graph

    path = _write(tmp_path, ROUTER)
    text = print_graph(load_agent(path))
    assert '"agent.branch"' in text and '"agent.join"' in text and '"agent.map"' in text
    assert "!tz.text" in text
    back = parse_graph(text)
    assert dict(back.op("wx").attrs)["gates"] == (("route", "weather"),)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('gates = [["route", "weather"]]', 'gates = [["route", "snow"]]',
         "op 'wx' attribute 'gates': branch 'route' has no arm 'snow'"),
        ('gates = [["route", "weather"]]', 'gates = [["kind", "weather"]]',
         "op 'wx' attribute 'gates': 'kind' is not an agent.branch defined before it"),
        ('attrs = {mode = "first"}', 'attrs = {mode = "any"}',
         "op 'merged' attribute 'mode': 'any' is not one of"),
    ],
)  # fmt: skip
def test_agent_dialect_verifier_refuses_bad_control_flow(tmp_path, capsys, old, new, message):
    from terrazzo.frontend.agent import load_agent
    from terrazzo.ir.dialect import print_graph

    text = print_graph(load_agent(_write(tmp_path, ROUTER)))
    assert old in text
    bad = tmp_path / "bad.mlir"
    bad.write_text(text.replace(old, new))
    assert main(["ir", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
