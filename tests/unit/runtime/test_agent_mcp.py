"""MCP-style tools: an agent program calls a JSON-RPC 2.0 ``tools/call`` server on loopback (initialize, session id, SSE answers, errors as values)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml


class _Mcp(BaseHTTPRequestHandler):
    """A minimal MCP streamable-HTTP server with one tool, ``shout``; answers tools/call as SSE."""

    log: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Mcp.log.append(msg["method"])
        if msg["method"] == "notifications/initialized":
            self.send_response(202)
            self.end_headers()
            return
        if msg["method"] != "initialize" and self.headers.get("Mcp-Session-Id") != "s-1":
            self.send_error(404, "no session")
            return
        if msg["method"] == "initialize":
            result: dict = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                            "serverInfo": {"name": "test", "version": "1"}}  # fmt: skip
        else:
            args = msg["params"]["arguments"]
            if msg["params"]["name"] != "shout":
                body = {"jsonrpc": "2.0", "id": msg["id"],
                        "error": {"code": -32602, "message": "unknown tool"}}  # fmt: skip
                return self._send(json.dumps(body), "application/json")
            text = args["text"]
            bad = "fail" in text
            result = {"content": [{"type": "text", "text": "no shouting" if bad else text.upper()}],
                      "isError": bad}  # fmt: skip
        body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
        if msg["method"] == "tools/call":
            return self._send(f"event: message\ndata: {body}\n\n", "text/event-stream")
        self._send(body, "application/json")

    def _send(self, body: str, ctype: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Mcp-Session-Id", "s-1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mcp_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Mcp)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/mcp"
    srv.shutdown()


def test_mcp_tool_in_a_program_with_a_branch_on_its_error(tmp_path, mcp_url):
    from terrazzo.frontend.agent_flow import text_value, to_text
    from terrazzo.pipeline import compile_agent
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    (tmp_path / "tools.py").write_text("def sorry(x):\n    return 'sorry: ' + x\n")
    spec = {
        "name": "mcp_prog",
        "nodes": [
            {"type": "input", "name": "q", "dtype": "string"},
            {"type": "mcp", "name": "shout", "url": mcp_url, "tool": "shout", "argument": "text"},
            {"type": "branch", "name": "ok", "default": "good",
             "arms": {"bad": {"of": "text", "op": "startswith", "value": "error"}}},
            {"type": "tool", "name": "apology", "function": "tools.py:sorry",
             "output": {"dtype": "string"}},
            {"type": "join", "name": "reply"},
            {"type": "output", "name": "answer"},
        ],
        "edges": ["q -> shout", "shout -> ok", "ok.bad -> apology", "ok.good -> reply",
                  "apology -> reply", "reply -> answer"],
    }  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({"devices": {"cpu": {"count": 4}}}))
    res = compile_agent(tmp_path / "p.yaml", tmp_path / "fleet.yaml", "2s", tmp_path / "p.tzb")
    agent = LocalAgent(agent_serving_plan(res.path))
    assert to_text(agent({"q": text_value("hello")})["answer"]) == "HELLO"
    assert to_text(agent({"q": text_value("please fail")})["answer"]) == (
        "sorry: error: no shouting"
    )
    assert _Mcp.log.count("initialize") == 1 and "notifications/initialized" in _Mcp.log


def test_mcp_protocol_errors_and_dead_servers_are_values(mcp_url):
    from terrazzo.frontend.agent_flow import text_value, to_text
    from terrazzo.runtime.agent_http import mcp_tool

    unknown = mcp_tool(mcp_url, "nope", "text", "x", "y", timeout_s=2, retries=0)
    assert to_text(unknown({"x": text_value("a")})["y"]) == "error: unknown tool"
    dead = mcp_tool("http://127.0.0.1:9/mcp", "shout", "text", "x", "y", timeout_s=0.5,
                    retries=1)  # fmt: skip
    out = to_text(dead({"x": text_value("a")})["y"])
    assert out.startswith("error: ") and np.asarray(out).size == 1
