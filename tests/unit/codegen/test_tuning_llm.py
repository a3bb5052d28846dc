"""The LLM proposer against a real OpenAI-compatible HTTP server on loopback, in the loop."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

tvm = pytest.importorskip("tvm")

from terrazzo.codegen.tuning import (  # noqa: E402
    LLMEndpoint,
    LLMProposer,
    MeasureOptions,
    TuneOptions,
    TuningDatabase,
    analyse,
    extract_json_object,
    tune_kernel,
)
from terrazzo.codegen.tuning import workloads as W  # noqa: E402

TARGET = {"kind": "llvm", "num-cores": 2}

GOOD = {
    "steps": [
        {"op": "get_sblock", "name": "C", "out": "C"},
        {"op": "get_loops", "block": "C", "out": ["i", "j", "k"]},
        {"op": "split", "loop": "j", "factors": [None, 8], "out": ["j0", "j1"]},
        {"op": "reorder", "loops": ["i", "j0", "k", "j1"]},
        {"op": "vectorize", "loop": "j1"},
        {"op": "decompose_reduction", "block": "C", "loop": "k"},
    ]
}
MISSING_LOOP = {
    "steps": [
        {"op": "get_sblock", "name": "C", "out": "C"},
        {"op": "get_loops", "block": "C", "out": ["i", "j", "k"]},
        {"op": "vectorize", "loop": "jj"},
    ]
}
# Builds and runs, but accumulates in int32: the verifier must catch the wrong numbers.
WRONG = {
    "steps": [
        {"op": "get_sblock", "name": "C", "out": "C"},
        {"op": "cache_write", "block": "C", "buffer_index": 0, "scope": "global", "out": "cw"},
        {"op": "unsafe_set_dtype", "block": "C", "buffer_index": 0, "dtype": "int32"},
    ]
}
UNKNOWN_OP = {"steps": [{"op": "exec_python", "code": "import os"}]}


class _Script:
    def __init__(self, replies: list[tuple[float, str]], refuse_structured: bool = False) -> None:
        self.replies = list(replies)
        self.refuse_structured = refuse_structured
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()


def _server(script: _Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(body)
                script.headers.append(dict(self.headers))
                if script.refuse_structured and "response_format" in body:
                    status, payload, delay = (
                        400,
                        {"error": {"message": "response_format not supported"}},
                        0.0,
                    )
                elif self.path != "/v1/chat/completions":
                    status, payload, delay = 404, {"error": "not found"}, 0.0
                else:
                    delay, content = script.replies.pop(0) if script.replies else (0.0, "{}")
                    status = 200
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 100,
                            "completion_tokens": 20,
                            "total_tokens": 120,
                        },
                    }
            time.sleep(delay)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture()
def kernel():
    return analyse("mm", W.matmul(16, 32, 16))


def _endpoint(srv: ThreadingHTTPServer, timeout_s: float = 5.0) -> LLMEndpoint:
    host, port = srv.server_address[:2]
    return LLMEndpoint(
        base_url=f"http://{host}:{port}/v1",
        model="scripted",
        api_key="sk-test",
        timeout_s=timeout_s,
        max_retries=0,
    )


def test_loop_rejects_each_bad_reply_with_its_reason_and_keeps_the_valid_one(kernel) -> None:
    script = _Script(
        [
            (0.0, "Here you go:\n```json\n" + json.dumps(GOOD) + "\n```"),
            (0.0, '{"steps": [{"op": "split", "loop": '),
            (0.0, json.dumps(MISSING_LOOP)),
            (0.0, json.dumps(WRONG)),
            (0.0, json.dumps(UNKNOWN_OP)),
            (1.5, json.dumps(GOOD)),
        ]
    )
    srv = _server(script)
    try:
        proposer = LLMProposer(_endpoint(srv, timeout_s=0.4))
        db = TuningDatabase()
        res = tune_kernel(
            kernel,
            tvm.target.Target(TARGET),
            proposer,
            TuneOptions(trials=6, batch=1, measure=MeasureOptions(min_measure_s=0.005)),
            db=db,
        )
    finally:
        srv.shutdown()
    stages = [(t.stage, t.ok) for t in res.trials]
    assert stages == [
        ("ok", True),
        ("parse", False),
        ("apply", False),
        ("verify", False),
        ("parse", False),
        ("proposer", False),
    ]
    reasons = [t.reason for t in res.trials]
    assert "not a JSON program" in reasons[1]
    assert "'jj'" in reasons[2] and "unbound" in reasons[2]
    assert "differs from the unscheduled kernel" in reasons[3]
    assert "unknown primitive 'exec_python'" in reasons[4]
    assert "timed out" in reasons[5]
    assert res.best_program is not None and res.best_program.to_data() == parse_good()
    # The only valid trial wins; its figure is the interleaved re-timing of the finalists
    # (tuning.loop._retime_finalists), not its first measurement.
    assert res.best_program.to_data() == res.trials[0].program.to_data()
    assert res.best_latency_s is not None and res.best_latency_s > 0
    # History reached the model: the 4th prompt names the earlier rejection.
    assert "rejected at apply" in script.requests[3]["messages"][1]["content"]
    assert script.headers[0].get("Authorization") == "Bearer sk-test"
    assert "response_format" in script.requests[0]
    assert res.usage["total_tokens"] == 120 * 5  # the timed-out request returned no usage
    if res.baseline_latency_s and res.best_latency_s < res.baseline_latency_s:
        assert len(db) == 1


def parse_good() -> dict:
    from terrazzo.codegen.tuning import parse_program

    return parse_program(GOOD).to_data()


def test_structured_output_refused_falls_back_to_plain_text(kernel) -> None:
    script = _Script([(0.0, json.dumps(GOOD))], refuse_structured=True)
    srv = _server(script)
    try:
        proposer = LLMProposer(_endpoint(srv))
        props = proposer.propose(
            kernel,
            tvm.target.Target(TARGET),
            (),
            1,
            __import__("terrazzo.codegen.tuning", fromlist=["x"]).local_hardware(),
        )
    finally:
        srv.shutdown()
    assert props[0].program is not None, props[0].error
    assert "response_format" in script.requests[0]
    assert "response_format" not in script.requests[1]


def test_unreachable_endpoint_is_a_failed_proposal_not_a_crash(kernel) -> None:
    srv = _server(_Script([]))
    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    proposer = LLMProposer(
        LLMEndpoint(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.5, max_retries=1)
    )
    from terrazzo.codegen.tuning import local_hardware

    props = proposer.propose(kernel, tvm.target.Target(TARGET), (), 1, local_hardware())
    assert props[0].program is None
    assert props[0].error_stage == "proposer"
    assert "after 2 attempts" in props[0].error


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"steps": []}', True),
        ('Sure!\n```json\n{"steps": [{"op": "parallel", "loop": "x"}]}\n```\nDone.', True),
        ('prefix {"a": 1} then {"steps": []}', True),
        ("no json here", False),
        ("```\n[1, 2]\n```", False),
    ],
)
def test_extract_json_object(text: str, ok: bool) -> None:
    if ok:
        assert isinstance(extract_json_object(text), dict)
    else:
        with pytest.raises(ValueError):
            extract_json_object(text)
