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


__all__ = ["http_tool"]
