"""The HTTP tool runner: one OpenAPI operation per call, with a timeout, retries and errors returned as text values."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

Runner = Any


def http_tool(
    method: str,
    url: str,
    path: str,
    param: str,
    location: str,
    input: str,
    output: str,
    timeout_s: float = 5.0,
    retries: int = 1,
    result: str | None = None,
    active: str | None = None,
    prev: str | None = None,
) -> Runner:
    """Call ``method url+path`` with the input as ``param`` (query string or JSON body).

    Returns the response body (or its JSON field ``result``) as text. A timeout, connection
    error or HTTP error status is retried ``retries`` times (0.05 s, then doubling, apart) and
    then returned as the text ``"error: <what>"`` — a value the program can branch on.
    """
    from terrazzo.frontend.agent_flow import text_value, to_text

    base = os.path.expandvars(url).rstrip("/")

    def call(arg: str) -> str:
        target = base + path
        data = None
        headers = {"Accept": "application/json, text/plain"}
        if location == "query":
            target += "?" + urllib.parse.urlencode({param: arg})
        else:
            data = json.dumps({param: arg}).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(target, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=float(timeout_s)) as resp:  # noqa: S310
            body = resp.read().decode("utf-8", "replace")
        if result:
            return str(json.loads(body)[result])
        return body

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if active is not None and not int(np.asarray(values[active]).reshape(-1)[0]):
            return {output: np.asarray(values[str(prev)])}
        arg = to_text(values[input])
        delay, err = 0.05, ""
        for attempt in range(int(retries) + 1):
            try:
                return {output: text_value(call(arg))}
            except urllib.error.HTTPError as e:
                err = f"error: HTTP {e.code} {e.reason}"
            except TimeoutError:
                err = f"error: timeout after {float(timeout_s):g} s"
            except urllib.error.URLError as e:
                reason = e.reason
                err = (f"error: timeout after {float(timeout_s):g} s"
                       if isinstance(reason, TimeoutError) else f"error: {reason}")  # fmt: skip
            except (ValueError, KeyError) as e:  # a response without the expected field
                err = f"error: bad response ({type(e).__name__}: {e})"
                break
            if attempt < int(retries):
                time.sleep(delay)
                delay *= 2
        return {output: text_value(err)}

    return run


def mcp_tool(
    url: str,
    tool: str,
    argument: str,
    input: str,
    output: str,
    timeout_s: float = 5.0,
    retries: int = 1,
    active: str | None = None,
    prev: str | None = None,
) -> Runner:
    """Call an MCP server's tool: ``initialize`` once (keeping ``Mcp-Session-Id``), then ``tools/call``.

    JSON-RPC 2.0 over the streamable HTTP transport (POST; the answer as JSON or as one SSE
    ``data:`` event). The result's text content is the value; an ``isError`` result, a JSON-RPC
    error, a timeout or an HTTP error (after ``retries``) becomes ``"error: ..."``.
    """
    from terrazzo.frontend.agent_flow import text_value, to_text

    endpoint = os.path.expandvars(url)
    session: dict[str, str] = {}
    ids = iter(range(1, 1 << 62))

    def rpc(method: str, params: dict[str, Any], notify: bool = False) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            msg["id"] = next(ids)
        headers = {"Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}  # fmt: skip
        if "sid" in session:
            headers["Mcp-Session-Id"] = session["sid"]
        req = urllib.request.Request(endpoint, data=json.dumps(msg).encode(), headers=headers,
                                     method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=float(timeout_s)) as resp:  # noqa: S310
            sid = resp.headers.get("Mcp-Session-Id")
            body = resp.read().decode("utf-8", "replace")
        if sid:
            session["sid"] = sid
        if notify:
            return None
        if body.lstrip().startswith(("event:", "data:")):  # one SSE event
            body = "\n".join(ln[5:].strip() for ln in body.splitlines() if ln.startswith("data:"))
        reply = json.loads(body)
        if "error" in reply:
            raise ValueError(str(reply["error"].get("message", reply["error"])))
        return reply["result"]

    def call(arg: str) -> str:
        if "ready" not in session:
            rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "terrazzo", "version": "1"}})  # fmt: skip
            rpc("notifications/initialized", {}, notify=True)
            session["ready"] = "1"
        result = rpc("tools/call", {"name": tool, "arguments": {argument: arg}})
        text = "".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
        return f"error: {text}" if result.get("isError") else text

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if active is not None and not int(np.asarray(values[active]).reshape(-1)[0]):
            return {output: np.asarray(values[str(prev)])}
        arg = to_text(values[input])
        delay, err = 0.05, ""
        for attempt in range(int(retries) + 1):
            try:
                return {output: text_value(call(arg))}
            except urllib.error.HTTPError as e:
                err = f"error: HTTP {e.code} {e.reason}"
                session.clear()  # a lost session: initialize again
            except (TimeoutError, urllib.error.URLError) as e:
                err = f"error: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError) as e:  # a JSON-RPC error or a malformed answer
                return {output: text_value(f"error: {e}")}
            if attempt < int(retries):
                time.sleep(delay)
                delay *= 2
        return {output: text_value(err)}

    return run


__all__ = ["http_tool", "mcp_tool"]
