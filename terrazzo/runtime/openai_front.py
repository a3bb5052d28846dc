"""An OpenAI-compatible HTTP endpoint for LLM bundles: ``/v1/completions``,
``/v1/chat/completions`` (both with server-sent-event streaming) and ``/v1/models``.

``terrazzo serve BUNDLE --openai-port N [--prefill-workers K]`` on a bundle from ``terrazzo
compile MODEL_DIR`` starts K prefill workers (default 1) and one decode worker as separate
processes (the normal ``terrazzo.runtime.worker`` over loopback gRPC), and this front
tokenises, calls a prefill worker (round robin), hands the prefill's KV cache to the decode
worker once, reads the generated tokens back and detokenises
(``terrazzo.runtime.llm_text.TextGenerator``). With batched decode stages (``--decode-batches``)
the decode worker runs the continuous-batching engine (``llm_batch``), so sequences from every
prefill worker step together; without them requests run one at a time and the decode worker
keeps each request's cache (``llm_text.decode_session``).

Bad requests (prompt longer than the context, unknown fields' bad values) answer HTTP 400 with
the OpenAI error body, which the ``openai`` client raises as ``BadRequestError``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from terrazzo.errors import ServingError
from terrazzo.runtime.llm_text import SamplingParams, SessionDecode, TextGenerator


class RemotePhase:
    """A bundle stage served by a worker, called like a stage runner (dict of arrays in/out)."""

    def __init__(self, address: str, index: int, inputs: tuple[str, ...], token: str) -> None:
        import grpc

        from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
        from terrazzo.runtime.worker import TOKEN_HEADER, grpc_options

        self.channel = grpc.insecure_channel(address, options=grpc_options(512 << 20))
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.model = f"stage{index}"
        self.inputs = inputs
        self.metadata = ((TOKEN_HEADER, token),)

    def __call__(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from terrazzo.runtime.protos import grpc_service_pb2 as pb
        from terrazzo.runtime.tensors import WireTensor, from_numpy, to_numpy

        req = pb.ModelInferRequest(model_name=self.model)
        for n in self.inputs:
            w = from_numpy(np.ascontiguousarray(values[n]))
            req.inputs.add(name=n, datatype=w.datatype, shape=w.shape)
            req.raw_input_contents.append(w.raw)
        resp = self.stub.ModelInfer(req, metadata=self.metadata, timeout=120)
        return {
            o.name: to_numpy(o.name, WireTensor(o.datatype, tuple(o.shape), raw))
            for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
        }

    def close(self) -> None:
        self.channel.close()


class RoundRobin:
    """Prefill over several prefill workers: each call goes to the next one (``calls`` counts
    the calls each worker took)."""

    def __init__(self, phases: list[Any]) -> None:
        self.phases = phases
        self.calls = [0] * len(phases)
        self._i = 0
        self._lock = threading.Lock()

    def __call__(self, values: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        with self._lock:
            i = self._i % len(self.phases)
            self._i += 1
            self.calls[i] += 1
        return self.phases[i](values)  # type: ignore[no-any-return]


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


class LLMService:
    """The two phase workers of an LLM bundle plus the text generator over them."""

    def __init__(
        self,
        bundle_path: str,
        trust: Any = None,
        allow_unsigned: bool = False,
        prefill_workers: int = 1,
        batching: bool = True,
    ) -> None:
        from pathlib import Path

        from terrazzo.bundle import open_bundle
        from terrazzo.runtime.launcher import LocalLauncher, WorkerOptions
        from terrazzo.runtime.plan import RunnerSpec, StageSpec

        with open_bundle(bundle_path, trust, allow_unsigned=allow_unsigned) as b:
            llm = (b.plan_json or {}).get("llm")
            if not llm:
                raise ServingError(f"{bundle_path}: --openai-port serves LLM bundles only")
            worker_trust = b.worker_trust()
            infos = {int(s.index): s for s in b.stages}
            self.name = str(b.name)
        self.token = secrets.token_hex(16)
        self.launcher = LocalLauncher(WorkerOptions(self.token, 512 << 20, fork_server=False))
        self.batching = bool(batching and (llm["stages"].get("decode_batch") or {}))
        if not isinstance(prefill_workers, int) or prefill_workers < 1:
            raise ServingError(f"--prefill-workers must be at least 1, got {prefill_workers!r}")
        self.prefill_workers = prefill_workers
        self.calibration: Any = None  # llm_predict.ServingCalibration, once measured
        jobs = []
        phases = ["prefill"] * prefill_workers + ["decode"]
        path = str(Path(bundle_path).resolve())
        for phase in phases:
            st = infos[int(llm["stages"][phase])]
            ins, outs = tuple(t.name for t in st.inputs), tuple(t.name for t in st.outputs)
            factory = "terrazzo.runtime.runners:bundle_stage"
            kwargs: dict[str, Any] = {
                "path": path,
                "index": int(st.index),
                "trust_key": worker_trust,
            }
            if phase == "decode" and self.batching:  # continuous batching (llm_batch)
                from terrazzo.runtime.llm_batch import RUNNER_INPUTS, RUNNER_OUTPUTS

                factory, ins, outs = ("terrazzo.runtime.llm_batch:batch_decode_runner",
                                      RUNNER_INPUTS, RUNNER_OUTPUTS)  # fmt: skip
                kwargs.pop("index")
            elif phase == "decode":  # the KV cache is handed over once and stays there
                factory, ins = "terrazzo.runtime.llm_text:decode_session", (*ins, "session")
            spec = StageSpec(
                index=int(st.index), device=str(st.device), inputs=ins, outputs=outs,
                runner=RunnerSpec(factory, kwargs),
            )  # fmt: skip
            jobs.append((spec, 0))
        self.jobs = jobs  # --- adapt: runtime.adapt.llm_swap starts a decode worker like these
        self.workers = self.launcher.start_many(jobs)
        self.phases = [
            RemotePhase(w.address, s.index, s.inputs, self.token)
            for w, (s, _) in zip(self.workers, jobs, strict=True)
        ]
        prefill = self.prefill = RoundRobin(self.phases[:-1])
        if self.batching:
            from terrazzo.runtime.llm_batch import RemoteBatchDecode

            self.batch: Any = RemoteBatchDecode(self.phases[-1])
            self.batch.calibrate()  # every worker is up: time the compiled batch sizes now
            self.generator = TextGenerator(llm, prefill, self.phases[-1], batch=self.batch)
            self.lock: Any = _NoLock()  # requests run concurrently; the engine batches them
        else:
            self.batch = None
            self.generator = TextGenerator(llm, prefill, SessionDecode(self.phases[-1]))
            self.lock = threading.Lock()  # one request at a time

    def calibrate_serving(self) -> Any:
        """Measure the serving costs the TTFT/TBT prediction needs on this host now
        (``llm_predict.calibrate_serving``; nothing else may be running); kept for /metrics."""
        from terrazzo.runtime.llm_predict import calibrate_serving

        if self.batch is None:
            raise ServingError("no continuous-batching engine (bundle without --decode-batches)")
        self.calibration = calibrate_serving(self.prefill, self.batch, self.generator.prompt_len)
        return self.calibration

    def metrics_text(self) -> str:
        """Prometheus text: the decode engine's measured step time per batch size next to the
        step time predicted for it (the compiled phase timed at start-up on this host, plus the
        per-step serving overhead once :meth:`calibrate_serving` has run), and counters."""
        if self.batch is None:
            return "# no continuous-batching engine (bundle without --decode-batches)\n"
        st = self.batch.stats()
        lines = [
            "# TYPE terrazzo_llm_decode_steps_total counter",
            f"terrazzo_llm_decode_steps_total {st['steps']}",
            "# TYPE terrazzo_llm_tokens_total counter",
            f"terrazzo_llm_tokens_total {st['tokens']}",
            "# TYPE terrazzo_llm_kv_free_blocks gauge",
            f"terrazzo_llm_kv_free_blocks {st['free_blocks']}",
            "# TYPE terrazzo_llm_prefill_requests_total counter",
            *(f'terrazzo_llm_prefill_requests_total{{worker="{i}"}} {n}'
              for i, n in enumerate(self.prefill.calls)),
            "# TYPE terrazzo_llm_tbt_seconds gauge",
        ]  # fmt: skip
        cal = getattr(self, "calibration", None)
        over = cal.overhead_s() if cal is not None else {}
        for b, t in sorted(st.get("calibrated_step_s", {}).items(), key=lambda x: int(x[0])):
            t = float(t) + over.get(int(b), 0.0)
            lines.append(f'terrazzo_llm_tbt_seconds{{batch="{b}",kind="predicted"}} {t}')
        for b, row in sorted(st.get("per_bucket", {}).items(), key=lambda x: int(x[0])):
            lines.append(f'terrazzo_llm_tbt_seconds{{batch="{b}",kind="measured"}} {row["mean_s"]}')
            lines.append(
                f'terrazzo_llm_tbt_seconds{{batch="{b}",kind="measured_p99"}} {row["p99_s"]}'
            )
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        for p in self.phases:
            p.close()
        for w in self.workers:
            w.stop()
        self.launcher.close()


def _params(body: Mapping[str, Any], default_max: int) -> SamplingParams:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
    mx = body.get("max_tokens", body.get("max_completion_tokens"))
    try:
        p = SamplingParams(
            max_tokens=default_max if mx is None else int(mx),
            temperature=float(body.get("temperature", 0.0) or 0.0),
            top_p=float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0),
            top_k=int(body.get("top_k") or 0),
            seed=None if body.get("seed") is None else int(body["seed"]),
            stop=stop,
        )
    except (TypeError, ValueError) as e:
        raise ServingError(f"bad sampling parameter: {e}") from None
    if p.max_tokens < 1:
        raise ServingError(f"max_tokens must be at least 1, got {p.max_tokens}")
    if p.temperature < 0 or not 0 < p.top_p <= 1:
        raise ServingError("temperature must be >= 0 and top_p in (0, 1]")
    return p


class _Handler(BaseHTTPRequestHandler):
    service: LLMService
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(status, {"error": {"message": message, "type": kind, "param": param,
                                      "code": None}})  # fmt: skip

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/metrics":
            data = self.service.metrics_text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": self.service.name, "object": "model", "created": 0, "owned_by": "terrazzo"}]})  # fmt: skip
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        path = self.path.rstrip("/")
        if path.startswith("/v2/models/"):
            self._generate(path)
            return
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            self._error(400, f"request body is not JSON: {e}")
            return
        chat = path.endswith("chat/completions")
        gen = self.service.generator
        try:
            if chat:
                msgs = body.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise ServingError("'messages' must be a non-empty list")
                ids = gen.encode_chat(msgs)
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1:
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise ServingError("'prompt' must be a string")
                ids = gen.encode(prompt)
            params = _params(body, 16)
            gen._check(ids)
        except ServingError as e:
            self._error(400, str(e))
            return
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        meta = {"id": rid, "created": int(time.time()), "model": self.service.name}
        with self.service.lock:
            try:
                if body.get("stream"):
                    self._stream(chat, meta, ids, params)
                else:
                    self._whole(chat, meta, ids, params)
            except Exception as e:  # a worker failure: report it, keep serving
                self._error(500, f"{type(e).__name__}: {e}")

    def _generate(self, path: str) -> None:
        """KServe v2 generate (Triton's LLM backends): ``/v2/models/<m>/generate`` and
        ``generate_stream`` (SSE, one event per token); ``text_input``, ``max_tokens``,
        ``temperature``, ``top_p``, ``top_k``, ``random_seed``, ``stop`` top-level or under
        ``parameters`` → ``text_output``."""
        parts = path.split("/")  # ['', 'v2', 'models', m, ('versions', v,) op]
        op = parts[-1]
        model = parts[3] if len(parts) > 4 else ""
        if op not in ("generate", "generate_stream") or model != self.service.name:
            self._json(404, {"error": f"no model {model!r} or route {self.path} "
                                      f"(serving {self.service.name!r})"})  # fmt: skip
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            merged = {**(body.get("parameters") or {}), **body}
            if "random_seed" in merged:
                merged["seed"] = merged["random_seed"]
            if "stop_words" in merged and "stop" not in merged:
                merged["stop"] = merged["stop_words"]
            text = merged.get("text_input")
            if not isinstance(text, str):
                raise ServingError("'text_input' must be a string")
            gen = self.service.generator
            ids = gen.encode(text)
            params = _params(merged, 16)
            gen._check(ids)
        except (ValueError, ServingError) as e:
            self._json(400, {"error": str(e)})
            return
        head = {"model_name": self.service.name, "model_version": "1"}
        with self.service.lock:
            if op == "generate":
                _, out, reason = gen.generate(ids, params)
                self._json(200, {**head, "text_output": out, "finish_reason": reason})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for _, delta in gen.stream_text(ids, params):
                if delta:
                    event = json.dumps({**head, "text_output": delta})
                    self.wfile.write(f"data: {event}\n\n".encode())
                    self.wfile.flush()

    def _whole(self, chat: bool, meta: dict[str, Any], ids: list[int], p: SamplingParams) -> None:
        toks, text, reason = self.service.generator.generate(ids, p)
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(toks),
                 "total_tokens": len(ids) + len(toks)}  # fmt: skip
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": reason, "logprobs": None}  # fmt: skip
            self._json(
                200, {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            self._json(
                200, {**meta, "object": "text_completion", "choices": [choice], "usage": usage}
            )

    def _stream(self, chat: bool, meta: dict[str, Any], ids: list[int], p: SamplingParams) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text is not None:
                    delta["content"] = text
                c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                c = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': obj, 'choices': [c]})}\n\n".encode()

        gen = self.service.generator
        n = 0
        last = -1
        if chat:
            self.wfile.write(chunk("", None, first=True))
        for tok, delta in gen.stream_text(ids, p):
            if tok >= 0:
                n, last = n + 1, tok
            if delta:
                self.wfile.write(chunk(delta, None))
                self.wfile.flush()
        eos = last in gen.eos and not p.ignore_eos
        reason = "length" if n >= p.max_tokens and not eos else "stop"
        self.wfile.write(chunk(None if chat else "", reason))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class OpenAIServer:
    """The HTTP front on ``host:port`` (0: any free port) over an :class:`LLMService`."""

    def __init__(self, service: LLMService, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"service": service})
        self.service = service
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.grpc: Any = None  # the KServe generate gRPC server, when started
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.service.close()


def serve_openai(bundle: str, port: int, host: str = "127.0.0.1", trust: Any = None,
                 allow_unsigned: bool = False, grpc_port: int | None = None,
                 prefill_workers: int = 1) -> Iterator[OpenAIServer]:  # fmt: skip
    """Start workers and the front; yields the running server, stops both when resumed.
    With ``grpc_port``, the KServe generate gRPC server (``llm_grpc``) runs too, as
    ``server.grpc``; ``prefill_workers`` prefill processes feed the one decode worker."""
    service = LLMService(bundle, trust, allow_unsigned, prefill_workers=prefill_workers)
    server = OpenAIServer(service, host, port)
    server.grpc = None
    if grpc_port is not None:
        from terrazzo.runtime.llm_grpc import GenerateGRPCServer

        server.grpc = GenerateGRPCServer(server.service, host, grpc_port)
        server.grpc.start()
    server.start()
    try:
        yield server
    finally:
        if server.grpc is not None:
            server.grpc.stop()
        server.stop()


def run_until_signal(bundle: str, port: int, host: str, trust: Any, allow_unsigned: bool,
                     grpc_port: int | None = None, prefill_workers: int = 1) -> int:  # fmt: skip
    """``terrazzo serve BUNDLE --openai-port N [--generate-grpc-port M] [--prefill-workers
    K]``: serve until SIGINT/SIGTERM."""
    import signal
    import sys

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    for server in serve_openai(bundle, port, host, trust, allow_unsigned, grpc_port,
                               prefill_workers):  # fmt: skip
        if server.grpc is not None:
            print(f"KServe generate gRPC (decoupled stream): {host}:{server.grpc.port}", flush=True)
        svc = server.service
        decode = "one continuous-batching decode worker" if svc.batching else "one decode worker"
        print(f"OpenAI-compatible endpoint: http://{host}:{server.port}/v1 (model {svc.name!r}; "
              f"{svc.prefill_workers} prefill worker(s) feeding {decode})", flush=True)  # fmt: skip
        sys.stdout.flush()
        done.wait()
    return 0
