"""The agent-program examples served: RAG (faiss text retrieval) and ReAct (LLM ⇄ HTTP tool loop), queried with the stock tritonclient.

Each example is compiled once (host builds), served by ``terrazzo serve`` and asked questions
whose answers are known: the RAG agent must return the passage that answers the question and
put it, as text, into its LLM's prompt; the ReAct agent must call the real HTTP tool on
loopback exactly as often as its branch chose to act, stop on its while-condition, and answer
with what the in-process run answers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "agents"
FLEET = {"devices": {"cpu": {"count": 8}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}
RAG_QA = [
    ("What is the capital of Freedonia?", "Fredville"),
    ("How high is Mount Orrin?", "4120 metres"),
    ("What do quokkas eat?", "leaves"),
    ("Which fuel does the Zephyr-9 rocket burn?", "methane"),
]


def _serve(bundle: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int, str]:
    cmd = [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle), "--port", "0",
           "--metrics-port", "0", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})  # fmt: skip
    lines: list[str] = []
    while not (lines and lines[-1].startswith("ready")):
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"terrazzo serve exited: {proc.stderr.read()[-3000:]}"  # type: ignore[union-attr]
        lines.append(line)
    text = "".join(lines)
    port = int(re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
    model = re.search(r"serving model '([^']+)'", text).group(1)  # type: ignore[union-attr]
    return proc, port, model


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def lookup():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import react_server
    finally:
        sys.path.remove(str(EXAMPLES))
    srv = react_server.start(0)
    url = f"http://127.0.0.1:{srv.server_port}"
    old = os.environ.get("LOOKUP_URL")
    os.environ["LOOKUP_URL"] = url  # the in-process runs call the same service
    yield react_server.Lookup, url
    srv.shutdown()
    if old is None:
        os.environ.pop("LOOKUP_URL", None)
    else:
        os.environ["LOOKUP_URL"] = old


@pytest.fixture(scope="module")
def served(tmp_path_factory, lookup):
    """Compile both examples (host builds only) and serve each with the ``terrazzo serve`` CLI."""
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet

    tmp = tmp_path_factory.mktemp("programs")
    fleet = Fleet.model_validate(FLEET)
    out = {}
    procs = []
    try:
        for name in ("rag_agent", "react_agent"):
            res = compile_agent(EXAMPLES / f"{name}.yaml", fleet, "5s", tmp / f"{name}.tzb",
                                device_builds=False)  # fmt: skip
            proc, port, model = _serve(res.path, {"LOOKUP_URL": lookup[1]})
            procs.append(proc)
            out[name] = (res, port, model)
        yield out
    finally:
        for p in procs:
            _stop(p)


def _ask(port: int, model: str, question: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    inp = tc.InferInput("question", [1], "BYTES")
    inp.set_data_from_numpy(np.array([question.encode()], dtype=object))
    res = client.infer(model, [inp], outputs=[tc.InferRequestedOutput(n) for n in names],
                       client_timeout=60)  # fmt: skip
    return {n: res.as_numpy(n) for n in names}


def test_rag_agent_retrieves_the_answering_passage_as_text_into_the_prompt(served):
    from terrazzo.frontend.agent_flow import text_value, to_text
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    res, port, model = served["rag_agent"]
    local = LocalAgent(agent_serving_plan(res.path))
    for question, fact in RAG_QA:
        got = _ask(port, model, question, ("context", "answer", "reader.prompt"))
        context = to_text(got["context"])
        assert fact in context, (question, context)
        prompt = to_text(got["reader.prompt"])
        assert fact in prompt and question in prompt  # passage text, then the question
        env = local({"question": text_value(question)})
        np.testing.assert_array_equal(got["answer"], env["answer"])


def test_react_agent_calls_the_http_tool_and_stops_on_its_condition(served, lookup):
    from terrazzo.frontend.agent_flow import text_value, to_text
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    counter, _ = lookup
    res, port, model = served["react_agent"]
    local = LocalAgent(agent_serving_plan(res.path), concurrent=True)
    acted = 0
    for question in ("What is 2+2?", "population of Paris", "Who wrote Hamlet?"):
        before = counter.calls
        got = _ask(port, model, question, ("answer", "react.iterations", "think"))
        calls = counter.calls - before
        iters = int(got["react.iterations"][0])
        finished = int(got["think"][0]) >= 128  # the last step's branch test: finish
        # every iteration but a finishing last one acted, i.e. called the tool once
        assert calls == iters - (1 if finished else 0), (question, calls, iters)
        answer = to_text(got["answer"])
        if finished:
            assert not answer.startswith("obs")  # the reply arm answered
        else:
            assert answer.startswith("obs:")  # the last observation
        acted += calls
        env = local({"question": text_value(question)})
        assert to_text(env["answer"]).startswith("obs") == answer.startswith("obs")
        assert int(env["react.iterations"][0]) == iters
    assert acted >= 1  # the tool was really called over HTTP


def test_http_tool_errors_are_values_after_retries(lookup):
    from terrazzo.frontend.agent_flow import text_value, to_text
    from terrazzo.runtime.agent_http import http_tool

    counter, url = lookup
    run = http_tool("GET", url, "/lookup", "q", "query", "x", "y", timeout_s=2, retries=2,
                    result="observation")  # fmt: skip
    counter.fail_every = 1  # every call answers 503
    try:
        before = counter.calls
        out = to_text(run({"x": text_value("hi")})["y"])
        assert out == "error: HTTP 503 busy" and counter.calls - before == 3  # 1 + 2 retries
    finally:
        counter.fail_every = 0
    dead = http_tool("GET", "http://127.0.0.1:9", "/lookup", "q", "query", "x", "y",
                     timeout_s=0.5, retries=0)  # fmt: skip
    assert to_text(dead({"x": text_value("hi")})["y"]).startswith("error: ")
    assert to_text(run({"x": text_value("abc")})["y"]).endswith(":3")
