"""KServe v2 HTTP/REST front of the gateway (JSON tensors and Triton's binary tensor extension).

Every request is translated into the gateway's protobuf message and handed to the gRPC
servicer in-process (``Gateway.ModelInfer``, ``ModelMetadata``, ...) through ``_Context``, a
stand-in for ``grpc.ServicerContext``: the HTTP port reuses every check, the admission limits,
deadlines, metrics and access log of the gRPC port. gRPC status codes map to HTTP statuses
(``HTTP_STATUS``); errors answer ``{"error": "<one line>"}`` as Triton does.

Endpoints (each answers only its own path; anything else is 404):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (200, or 503 when not ready)
* ``GET /v2`` (server metadata)
* ``GET /v2/models/{m}[/versions/{v}]`` (model metadata), ``.../ready`` (200/503, 404 unknown)
* ``POST /v2/models/{m}[/versions/{v}]/infer``: JSON inputs (``data`` flat or nested, BYTES as
  strings, BOOL as true/false, FP16 as numbers) or binary inputs (``parameters.binary_data_size``
  with the ``Inference-Header-Content-Length`` header); outputs in JSON, or binary when asked
  (``outputs[].parameters.binary_data`` or the request parameter ``binary_data_output``).

Server: the standard library's ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, Nagle off, a
thread per connection). The gateway's work is blocking (it waits on worker gRPC futures), so
an asyncio server (aiohttp, uvicorn) would have to hand every request to a thread pool anyway;
the standard server adds no dependency and its per-request overhead is small next to the two
worker hops (benchmarks/http_vs_grpc.py measures it). Token and TLS follow the gRPC port:
with a token, every path but ``/v2/health/*`` needs ``Authorization: Bearer <token>`` (the
health paths stay open for probes, as grpc.health.v1 does); with TLS options, the port serves
TLS (mTLS when a client CA is given).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from terrazzo.errors import ServingError

try:  # 4-10x faster JSON than the standard library (the HTTP JSON target depends on it)
    import orjson
except ImportError:  # pragma: no cover - a runtime install without it falls back to json
    orjson = None  # type: ignore[assignment]
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.tensors import numpy_dtype

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from terrazzo.runtime.gateway import Gateway

log = logging.getLogger("terrazzo.runtime.http")

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
HEADER_LENGTH = "Inference-Header-Content-Length"
_DISCARD_BYTES = 64 << 20  # an oversized body up to this much beyond the limit is read and dropped
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")


class _Abort(Exception):
    """Raised by ``_Context.abort``: the servicer refused the call with this code."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code


class HTTPError(Exception):
    """A request fails with this HTTP status and one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Context:
    """What the Gateway servicer uses of ``grpc.ServicerContext``, for an in-process call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), timeout_s: float | None = None):
        self._metadata = metadata
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.code = grpc.StatusCode.OK
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def is_active(self) -> bool:
        return True  # a client gone mid-request is seen when the response is written

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True  # no RPC end to signal: the call ends when the servicer returns


# -- tensor codec ---------------------------------------------------------------------------
def _json_to_raw(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON ``data`` (flat or nested) of one input -> raw little-endian bytes (sizes are checked
    by the gateway against the shape)."""
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            arr = np.asarray(data, dtype=object).reshape(-1)
            for item in arr:
                if not isinstance(item, (str, bytes)):
                    raise ValueError(f"BYTES elements must be strings, got {type(item).__name__}")
            return bytes(serialize_byte_tensor(arr).item()) if arr.size else b""
        dtype = numpy_dtype(datatype)
        if datatype == "BOOL":
            flat = np.asarray(data, dtype=object).reshape(-1)
            if not all(isinstance(v, bool) for v in flat):
                raise ValueError("BOOL elements must be true or false")
            arr = np.asarray(data, dtype=dtype).reshape(-1)
        elif dtype.kind == "f":  # numbers only (a string such as "1.5" is refused)
            probe = np.asarray(data).reshape(-1)
            if probe.size and probe.dtype.kind not in "iuf":
                raise ValueError("elements must be numbers")
            arr = probe.astype(dtype)
        else:  # integers only, in range (no truncated floats, no silent wrap-around)
            items = np.asarray(data, dtype=object).reshape(-1).tolist()
            if not all(type(v) is int for v in items):
                raise ValueError("elements must be integers")
            info = np.iinfo(dtype)
            if items and (min(items) < info.min or max(items) > info.max):
                raise ValueError(f"a value is outside [{info.min}, {info.max}]")
            arr = np.array(items, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise HTTPError(400, f"inputs[{name!r}].data: not {datatype} values: {e}") from None
    return arr.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def _raw_to_json(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        items = deserialize_bytes_tensor(raw) if raw else []
        return [bytes(b).decode("utf-8", errors="replace") for b in items]
    return np.frombuffer(raw, dtype=numpy_dtype(datatype).newbyteorder("<")).tolist()


def _parameter(pmsg: Any, key: str, value: Any) -> None:
    p = pmsg[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise HTTPError(400, f"parameters[{key!r}]: {value} does not fit in int64")
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    else:
        raise HTTPError(400, f"parameters[{key!r}]: must be a bool, number or string")


def _field(
    obj: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if key not in obj:
        if default is ...:
            raise HTTPError(400, f"{where}.{key}: missing")
        return default
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise HTTPError(400, f"{where}.{key}: must be {names}, got {type(value).__name__}")
    return value


def build_request(
    model: str, version: str, header: Any, binary: memoryview
) -> tuple[Any, dict[str, bool]]:
    """A KServe v2 JSON infer request (+ its binary tail) -> (ModelInferRequest, binary flags
    of the outputs to answer, by name; '' is the request-wide default)."""
    if not isinstance(header, dict):
        raise HTTPError(400, "request body: must be a JSON object")
    req = pb.ModelInferRequest(model_name=model, model_version=version)  # type: ignore[attr-defined]
    req.id = _field(header, "id", str, "request", "")
    params = _field(header, "parameters", dict, "request", {})
    binary_default = False
    for key, value in params.items():
        if key == "binary_data_output":
            binary_default = bool(value)
            continue
        _parameter(req.parameters, key, value)
    inputs = _field(header, "inputs", list, "request")
    pos = 0
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise HTTPError(400, f"{where}: must be an object")
        name = _field(t, "name", str, where)
        where = f"inputs[{name!r}]"
        datatype = _field(t, "datatype", str, where)
        shape = _field(t, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise HTTPError(400, f"{where}.shape: must be a list of integers")
        tparams = _field(t, "parameters", dict, where, {})
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise HTTPError(400, f"{where}.parameters.binary_data_size: must be an int >= 0")
            if "data" in t:
                raise HTTPError(400, f"{where}: both data and binary_data_size given")
            if pos + size > len(binary):
                raise HTTPError(
                    400,
                    f"{where}.parameters.binary_data_size: {size} bytes at offset {pos} but the "
                    f"body has {len(binary)} binary bytes",
                )
            raw = bytes(binary[pos : pos + size])
            pos += size
        elif "data" in t:
            raw = _json_to_raw(name, datatype, shape, t["data"])
        else:
            raise HTTPError(400, f"{where}.data: missing (nor parameters.binary_data_size)")
        tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
        for key, value in tparams.items():
            if key != "binary_data_size":
                _parameter(tensor.parameters, key, value)
        req.raw_input_contents.append(raw)
    if pos != len(binary):
        raise HTTPError(400, f"request body: {len(binary) - pos} binary bytes no input claims")
    flags: dict[str, bool] = {"": binary_default}
    for i, o in enumerate(_field(header, "outputs", list, "request", [])):
        where = f"outputs[{i}]"
        if not isinstance(o, dict):
            raise HTTPError(400, f"{where}: must be an object")
        name = _field(o, "name", str, where)
        oparams = _field(o, "parameters", dict, f"outputs[{name!r}]", {})
        if oparams.get("classification"):
            raise HTTPError(400, f"outputs[{name!r}].parameters.classification: not supported")
        flags[name] = bool(oparams.get("binary_data", binary_default))
        req.outputs.add(name=name)
    return req, flags


# printf formats with just enough significant digits to round-trip each float type exactly:
# 2-3x faster than json.dumps of the floats' shortest float64 repr, and shorter
_FLOAT_FORMAT = {"FP16": "%.5g", "FP32": "%.9g", "FP64": "%.17g"}


def _data_json(datatype: str, raw: bytes) -> str:
    """The JSON text of an output's flat ``data`` array."""
    fmt = _FLOAT_FORMAT.get(datatype)
    if datatype != "BYTES":
        arr = np.frombuffer(raw, dtype=numpy_dtype(datatype).newbyteorder("<"))
        # NaN/Infinity: orjson would write null; json.dumps writes them as Python does
        if fmt is None or np.isfinite(arr).all():
            if orjson is not None:  # shortest round-trip digits of the array's own type
                return orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            if fmt is not None:
                return ("[" + ",".join([fmt] * arr.size) + "]") % tuple(arr.tolist())
    return json.dumps(_raw_to_json(datatype, raw), separators=(",", ":"))


def _loads(text: bytes | memoryview) -> Any:
    """Parse a JSON request header (orjson when present; json accepts NaN/Infinity too)."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json parses what orjson refuses (NaN) or names the error
    return json.loads(bytes(text))


def encode_response(resp: Any, flags: dict[str, bool]) -> tuple[bytes, int | None]:
    """ModelInferResponse -> (body, JSON header length when binary outputs follow, else None)."""
    outputs = []
    tail: list[bytes] = []
    dumps = json.dumps
    for i, t in enumerate(resp.outputs):
        raw = resp.raw_output_contents[i]
        head = f'{{"name":{dumps(t.name)},"datatype":{dumps(t.datatype)},"shape":{list(t.shape)}'
        if flags.get(t.name, flags[""]):
            outputs.append(f'{head},"parameters":{{"binary_data_size":{len(raw)}}}}}')
            tail.append(raw)
        else:
            outputs.append(f'{head},"data":{_data_json(t.datatype, raw)}}}')
    rid = f',"id":{dumps(resp.id)}' if resp.id else ""
    text = (
        f'{{"model_name":{dumps(resp.model_name)},"model_version":{dumps(resp.model_version)}'
        f'{rid},"outputs":[{",".join(outputs)}]}}'
    )
    body = text.encode()
    if not tail:
        return body, None
    return b"".join([body, *tail]), len(body)


# -- the server -----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300  # an idle keep-alive connection is closed after this
    server: _FrontServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        slots = self.server.front.connection_slots
        if not slots.acquire(blocking=False):  # like gRPC's maximum_concurrent_rpcs
            self.close_connection = True
            try:
                if self.parse_request_line():
                    self._json(503, {"error": "too many connections; retry later"})
            except OSError:
                pass
            return
        try:
            super().handle()
        finally:
            slots.release()

    def parse_request_line(self) -> bool:
        self.raw_requestline = self.rfile.readline(65537)
        return bool(self.raw_requestline) and self.parse_request()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except HTTPError as e:
            self._json(e.status, {"error": str(e)})
        except _Abort as e:
            self._json(HTTP_STATUS.get(e.code, 500), {"error": e.args[0]})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: answer 500 with one line rather than drop the client
            log.exception("HTTP %s %s failed", method, self.path)
            self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        front = self.server.front
        gw = front.gateway
        if path in ("/v2/health/live", "/v2/health/ready"):
            self._need(method, "GET")
            self._drain_body()
            if path.endswith("live"):
                ok = gw.ServerLive(pb.ServerLiveRequest(), _Context()).live  # type: ignore[attr-defined]
            else:
                ok = gw.ServerReady(pb.ServerReadyRequest(), _Context()).ready  # type: ignore[attr-defined]
            self._json(200 if ok else 503, {"live" if path.endswith("live") else "ready": ok})
            return
        self._authorize()
        ctx = _Context(self._metadata())
        if path == "/v2":
            self._need(method, "GET")
            self._drain_body()
            md = gw.ServerMetadata(pb.ServerMetadataRequest(), ctx)  # type: ignore[attr-defined]
            self._json(
                200, {"name": md.name, "version": md.version, "extensions": list(md.extensions)}
            )
            return
        m = _MODEL_PATH.match(path)
        if m is None:
            self._drain_body()
            raise HTTPError(404, f"no endpoint {path!r}")
        model, version, action = unquote(m.group(1)), unquote(m.group(2) or ""), m.group(3)
        if action == "/infer":
            self._need(method, "POST")
            self._infer(model, version, ctx)
            return
        self._need(method, "GET")
        self._drain_body()
        md = gw.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), ctx)  # type: ignore[attr-defined]
        if action == "/ready":
            ready = gw.ModelReady(pb.ModelReadyRequest(name=model, version=version), ctx).ready  # type: ignore[attr-defined]
            self._json(200 if ready else 503, {"ready": ready})
            return
        self._json(
            200,
            {
                "name": md.name,
                "versions": list(md.versions),
                "platform": md.platform,
                "inputs": [_tensor_md(t) for t in md.inputs],
                "outputs": [_tensor_md(t) for t in md.outputs],
            },
        )

    def _infer(self, model: str, version: str, ctx: _Context) -> None:
        body = self._read_body()
        hlen_s = self.headers.get(HEADER_LENGTH)
        if hlen_s is not None:
            try:
                hlen = int(hlen_s)
            except ValueError:
                raise HTTPError(400, f"{HEADER_LENGTH}: not an integer: {hlen_s!r}") from None
            if not 0 <= hlen <= len(body):
                raise HTTPError(
                    400, f"{HEADER_LENGTH}: {hlen} is outside the body of {len(body)} bytes"
                )
        else:
            hlen = len(body)
        view = memoryview(body)
        try:
            header = _loads(view[:hlen] if hlen != len(body) else body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"request body: malformed JSON: {e}") from None
        req, flags = build_request(model, version, header, view[hlen:])
        resp = self.server.front.gateway.ModelInfer(req, ctx)
        out, json_len = encode_response(resp, flags)
        extra = {HEADER_LENGTH: str(json_len)} if json_len is not None else {}
        ctype = "application/octet-stream" if json_len is not None else "application/json"
        self._send(200, out, ctype, extra)

    # -- helpers ----------------------------------------------------------------------------
    def _need(self, method: str, allowed: str) -> None:
        if method != allowed:
            self._drain_body()
            raise HTTPError(405, f"{self.path}: use {allowed}")

    def _authorize(self) -> None:
        expected = self.server.front.expected_auth
        if expected is None:
            return
        got = (self.headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(got, expected):
            self._drain_body()
            raise HTTPError(401, "missing or invalid bearer token")

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k.lower(), v) for k, v in self.headers.items())

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise HTTPError(411, "chunked bodies are not supported: send Content-Length")
        value = self.headers.get("Content-Length")
        if value is None:
            return 0
        try:
            n = int(value)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, f"Content-Length: not an integer: {value!r}") from None
        if n < 0:
            self.close_connection = True
            raise HTTPError(400, "Content-Length: negative")
        return n

    def _drain_body(self, n: int | None = None) -> None:
        """Read and drop a body, so the client sees the answer rather than a reset connection
        (one far too large is left unread and the connection closed)."""
        n = self._content_length() if n is None else n
        if n > self.server.front.max_body_bytes + _DISCARD_BYTES:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def _read_body(self) -> bytes:
        n = self._content_length()
        if n > self.server.front.max_body_bytes:
            self._drain_body(n)
            raise HTTPError(
                413, f"request of {n} bytes exceeds the {self.server.front.max_body_bytes} allowed"
            )
        enc = self.headers.get("Content-Encoding", "identity").lower()
        body = self.rfile.read(n) if n else b""
        if len(body) != n:
            self.close_connection = True
            raise HTTPError(400, f"request body: {len(body)} of {n} bytes received")
        if enc not in ("identity", ""):
            raise HTTPError(415, f"Content-Encoding {enc!r} is not supported")
        return body

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _tensor_md(t: Any) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    front: HTTPFront

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        ctx = self.front.ssl_context
        if ctx is not None:  # handshake in the connection's thread, not the accept loop
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed TLS handshake or a client gone mid-request: one debug line, no traceback
        log.debug("HTTP connection from %s failed", client_address, exc_info=True)


def _ssl_context(cert_chain: bytes, private_key: bytes, client_ca: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl loads a certificate and key from files only: a private directory, removed at once
    with tempfile.TemporaryDirectory(prefix="tz-tls-") as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        for path, data in ((cert, cert_chain), (key, private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class HTTPFront:
    """The KServe v2 HTTP/REST endpoint over a Gateway, on its own port and threads."""

    def __init__(
        self,
        gateway: Gateway,
        host: str,
        port: int,
        *,
        token: str | None = None,
        tls: Any = None,
        max_body_bytes: int = 256 << 20,
        max_connections: int = 256,
    ):
        self.gateway = gateway
        self.expected_auth = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.ssl_context = (
            _ssl_context(tls.cert_chain, tls.private_key, tls.client_ca) if tls else None
        )
        try:
            self._httpd = _FrontServer((host, port), _Handler, bind_and_activate=True)
        except OSError as e:
            raise ServingError(f"cannot serve HTTP on {host}:{port}: {e}") from e
        self._httpd.front = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="tz-http"
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; connections in progress end with their daemon threads."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# -- the metrics port -----------------------------------------------------------------------
class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._work, args=(request, client_address), name="tz-metrics", daemon=True
        )
        t.start()

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass


def metrics_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """Prometheus' WSGI app answering ``/metrics`` only (404 for every other path)."""
    from prometheus_client import make_wsgi_app

    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            body = b"not found: the metrics port serves /metrics only\n"
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return inner(environ, start_response)

    return app


def start_metrics_http(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``/metrics`` (and only it) on ``host:port`` from a daemon thread."""
    httpd = make_server(
        host, port, metrics_app(registry), _ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=httpd.serve_forever, name="tz-metrics-http", daemon=True).start()
    return httpd


__all__ = ["HTTP_STATUS", "HTTPError", "HTTPFront", "start_metrics_http"]
