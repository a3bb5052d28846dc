"""LLM proposer: asks any OpenAI-compatible chat-completions endpoint for schedule programs.

Sits in the schedule search beside the offline proposer. The prompt holds the kernel's
TVMScript, the target and hardware, the program format, and the history of candidates with
their latencies or rejection reasons; the reply must be one JSON schedule program. Structured
output (``response_format: json_schema``) is requested and dropped if the endpoint refuses
it; replies are parsed robustly (code fences stripped, first JSON object taken). Network
failures and timeouts are retried, then reported as a failed proposal, never raised.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from terrazzo.codegen.tuning.config import LLMEndpoint
from terrazzo.codegen.tuning.kernel import Kernel
from terrazzo.codegen.tuning.program import PRIMITIVES, ScheduleProgramError, parse_program
from terrazzo.codegen.tuning.proposer import HardwareSpec, Proposal, Trial

MAX_HISTORY = 12
MAX_SCRIPT_CHARS = 12000

SYSTEM_PROMPT = """You optimise TVM TensorIR kernels by writing schedule programs.
Reply with ONE JSON object and nothing else: {"steps": [ ... ]}. Each step is an object with
"op" (one primitive) and its arguments. Names in "out" bind blocks/loops for later steps.
Primitives and arguments:
- get_sblock {name: block name in the kernel, out}
- get_loops {block, out: [one name per loop, outermost first]}
- split {loop, factors: [ints, at most one null], out: [one name per factor]} (product must equal the extent unless one factor is null)
- reorder {loops: [...]}; fuse {loops: [...], out}
- parallel {loop}; vectorize {loop}; unroll {loop}
- cache_read {block, buffer_index, scope, out}; cache_write {block, buffer_index, scope, out}
- compute_at {block, loop}; reverse_compute_at {block, loop}
- compute_inline {block}; reverse_compute_inline {block}
- decompose_reduction {block, loop, out?}  (call it LAST, after parallel/vectorize)
- annotate {target, key, value}
Example for a matmul block "C" with loops i, j, k:
{"steps": [{"op": "get_sblock", "name": "C", "out": "C"},
 {"op": "get_loops", "block": "C", "out": ["i", "j", "k"]},
 {"op": "split", "loop": "i", "factors": [null, 8], "out": ["i0", "i1"]},
 {"op": "split", "loop": "j", "factors": [null, 32], "out": ["j0", "j1"]},
 {"op": "split", "loop": "k", "factors": [null, 4], "out": ["k0", "k1"]},
 {"op": "reorder", "loops": ["i0", "j0", "k0", "i1", "k1", "j1"]},
 {"op": "fuse", "loops": ["i0", "j0"], "out": "ij"},
 {"op": "parallel", "loop": "ij"}, {"op": "vectorize", "loop": "j1"},
 {"op": "decompose_reduction", "block": "C", "loop": "k0"}]}
Aim for the lowest latency; learn from the history (times and errors)."""

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"op": {"type": "string", "enum": list(PRIMITIVES)}},
                "required": ["op"],
            },
        }
    },
    "required": ["steps"],
}


def extract_json_object(text: str) -> Any:
    """The first JSON object in ``text`` (code fences and prose around it are ignored).

    Raises:
        ValueError: no JSON object could be decoded.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        if "```" in stripped:
            stripped = stripped[: stripped.rindex("```")]
    decoder = json.JSONDecoder()
    for candidate in (stripped, text):
        start = candidate.find("{")
        while start != -1:
            try:
                obj, _end = decoder.raw_decode(candidate, start)
                if isinstance(obj, dict):
                    return obj
            except json.JSONDecodeError:
                pass
            start = candidate.find("{", start + 1)
    raise ValueError("no JSON object found in the reply")


def build_prompt(
    kernel: Kernel, target: Any, history: Sequence[Trial], hardware: HardwareSpec
) -> str:
    """The user message: target, hardware, kernel, blocks and the trial history."""
    script = kernel.script()
    if len(script) > MAX_SCRIPT_CHARS:
        script = script[:MAX_SCRIPT_CHARS] + "\n# ... (truncated)"
    blocks = "\n".join(
        f"- block {b.name!r}: loops {list(b.loop_extents)} kinds {''.join(b.loop_kinds)}"
        f"{' (has init: reduction)' if b.has_init else ''}"
        for b in kernel.blocks
    )
    lines = [
        f"Target: {_target_text(target)}",
        f"Hardware: {hardware.text()}",
        f"Kernel class: {kernel.kernel_class}; {kernel.flops:.3g} FLOPs; "
        f"{kernel.bytes_accessed} bytes of parameters.",
        "Blocks (S = spatial loop, R = reduction loop):",
        blocks,
        "Kernel (TVMScript):",
        script,
    ]
    if history:
        recent = list(history)[-MAX_HISTORY:]
        best = min(
            (t for t in history if t.ok and t.latency_s),
            key=lambda t: t.latency_s or 0,
            default=None,
        )
        lines.append("History of your candidates (most recent last):")
        for t in recent:
            prog = t.program.to_json() if t.program is not None else "(none)"
            lines.append(f"- {t.summary()}\n  program: {prog}")
        if best is not None and best.program is not None:
            lines.append(f"Best so far: {best.latency_s * 1e6:.1f} us: {best.program.to_json()}")  # type: ignore[operator]
        lines.append("Propose a different program that should be faster.")
    else:
        lines.append("Propose a fast schedule program.")
    return "\n".join(lines)


def _target_text(target: Any) -> str:
    try:
        return json.dumps(
            dict(target.export()), default=lambda o: list(o) if hasattr(o, "__iter__") else str(o)
        )
    except Exception:
        return str(target)


class LLMProposer:
    """Schedule programs from an OpenAI-compatible chat-completions endpoint."""

    name = "llm"

    def __init__(self, endpoint: LLMEndpoint) -> None:
        self.endpoint = endpoint
        self._structured = endpoint.structured_output
        #: one entry per request: prompt/completion tokens, latency, outcome
        self.requests: list[dict[str, Any]] = []

    def propose(
        self,
        kernel: Kernel,
        target: Any,
        history: Sequence[Trial],
        n: int,
        hardware: HardwareSpec,
    ) -> list[Proposal]:
        out = []
        for _ in range(n):
            out.append(self._one(kernel, target, history, hardware))
        return out

    def _one(
        self, kernel: Kernel, target: Any, history: Sequence[Trial], hw: HardwareSpec
    ) -> Proposal:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": build_prompt(kernel, target, history, hw)},
        ]
        try:
            reply, usage = self._chat(messages)
        except _EndpointError as e:
            return Proposal(None, error=str(e), error_stage="proposer")
        try:
            data = extract_json_object(reply)
        except ValueError as e:
            return Proposal(
                None,
                raw=reply,
                error=f"reply is not a JSON program: {e}",
                error_stage="parse",
                usage=usage,
            )
        try:
            program = parse_program(data)
        except ScheduleProgramError as e:
            return Proposal(
                None,
                raw=reply,
                error=f"reply is not a valid program: {e}",
                error_stage="parse",
                usage=usage,
            )
        return Proposal(program, raw=reply, usage=usage)

    def _chat(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, int]]:
        ep = self.endpoint
        last = ""
        attempt = 0
        while attempt <= ep.max_retries:
            body: dict[str, Any] = {
                "model": ep.model,
                "messages": messages,
                "temperature": ep.temperature,
                "max_tokens": ep.max_tokens,
            }
            if self._structured:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "schedule_program", "schema": RESPONSE_SCHEMA},
                }
            t0 = time.perf_counter()
            try:
                resp = self._post(body)
            except _HTTPStatus as e:
                if self._structured and e.status in (400, 422) and "response_format" in e.body:
                    self._structured = False  # endpoint lacks structured output: ask plainly
                    continue  # does not count as a retry
                last = f"HTTP {e.status}: {e.body[:200]}"
                if e.status < 500 and e.status != 429:
                    break
            except TimeoutError:
                last = f"timed out after {ep.timeout_s:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last = f"cannot reach {ep.base_url}: {getattr(e, 'reason', e)}"
            else:
                usage = {
                    k: int(v) for k, v in (resp.get("usage") or {}).items() if isinstance(v, int)
                }
                self.requests.append({**usage, "latency_s": time.perf_counter() - t0})
                try:
                    content = resp["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    last = "malformed chat-completions response (no choices[0].message.content)"
                else:
                    return str(content), usage
            self.requests.append({"error": 1, "latency_s": time.perf_counter() - t0})
            if attempt < ep.max_retries:
                time.sleep(min(2.0, 0.2 * 2**attempt))
            attempt += 1
        n = min(attempt + 1, ep.max_retries + 1)
        raise _EndpointError(f"LLM endpoint failed after {n} attempts: {last}")

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoint
        url = ep.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if ep.api_key:
            headers["Authorization"] = f"Bearer {ep.api_key}"
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=ep.timeout_s) as r:  # noqa: S310 (URL from config)
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise _HTTPStatus(e.code, e.read().decode("utf-8", "replace")) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError | socket.timeout):
                raise TimeoutError(str(e.reason)) from None
            raise
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return {"choices": None}
        return data if isinstance(data, dict) else {"choices": None}

    def usage_totals(self) -> dict[str, int]:
        """Summed token usage over all requests."""
        tot: dict[str, int] = {}
        for r in self.requests:
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                tot[k] = tot.get(k, 0) + int(r.get(k, 0))
        tot["requests"] = len(self.requests)
        return tot


class _EndpointError(Exception):
    pass


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


__all__ = ["LLMProposer", "build_prompt", "extract_json_object"]
