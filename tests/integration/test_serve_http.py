"""KServe v2 HTTP/REST beside gRPC: stock tritonclient.http, raw JSON over urllib, error statuses,
exact health paths, and the metrics port answering /metrics only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as tch
from tritonclient.utils import InferenceServerException

from terrazzo.runtime import serve
from terrazzo.runtime.http_front import HTTPError, build_request, encode_response
from terrazzo.runtime.protos import grpc_service_pb2 as pb

from . import test_serve_cleanup as _cleanup
from .serving_helpers import chain_plan

pytestmark = pytest.mark.timeout(120)
cli_bundle = _cleanup.bundle  # the fixture: a compiled MLP .tzb, its input and torch's output

TOKEN = "http-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # tritonclient.http adds to a headers dict: pass copies
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(libs):
    with serve(
        chain_plan(libs), metrics_port=0, http_port=0, token=TOKEN, max_message_bytes=MAX_BODY
    ) as s:
        yield s


@pytest.fixture()
def hclient(server):
    c = tch.InferenceServerClient(f"127.0.0.1:{server.http_port}", concurrency=4)
    yield c
    c.close()


def _http(server, method: str, path: str, body: bytes | None = None, headers=None, port=None):
    """(status, parsed JSON or raw bytes) of one plain HTTP request."""
    url = f"http://127.0.0.1:{port or server.http_port}{path}"
    req = urllib.request.Request(url, data=body, method=method, headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(data) if "json" in ctype else data)


def _post_json(server, path: str, obj) -> tuple[int, object]:
    return _http(
        server, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )


def test_stock_http_client_health_and_metadata(server, hclient):
    assert hclient.is_server_live(headers=dict(AUTH))
    assert hclient.is_server_ready(headers=dict(AUTH))
    assert hclient.is_model_ready("toy", headers=dict(AUTH))
    assert not hclient.is_model_ready("nope", headers=dict(AUTH))
    md = hclient.get_server_metadata(headers=dict(AUTH))
    assert md["name"] == "terrazzo"
    mmd = hclient.get_model_metadata("toy", headers=dict(AUTH))
    assert [t["name"] for t in mmd["inputs"]] == ["x"]
    assert {t["name"]: t["datatype"] for t in mmd["outputs"]} == {"z": "FP32", "y": "FP32"}
    assert mmd["inputs"][0]["shape"] == [-1]
    with pytest.raises(InferenceServerException, match="unknown model"):
        hclient.get_model_metadata("nope", headers=dict(AUTH))


def _http_infer(hclient, x: np.ndarray, binary: bool, **kw):
    inp = tch.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [tch.InferRequestedOutput(n, binary_data=binary) for n in ("z", "y")]
    return inp, outs


def test_infer_json_binary_async_match_grpc_bit_for_bit(server, hclient):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1024).astype(np.float32)  # 4 KiB
    g = tcg.InferenceServerClient(f"127.0.0.1:{server.port}")
    ginp = tcg.InferInput("x", [1024], "FP32")
    ginp.set_data_from_numpy(x)
    gres = g.infer("toy", [ginp], headers={"authorization": f"Bearer {TOKEN}"})
    g.close()
    want = {n: gres.as_numpy(n) for n in ("z", "y")}
    np.testing.assert_allclose(want["z"], 2 * x + 1, rtol=1e-6)
    for binary in (False, True):
        inp, outs = _http_infer(hclient, x, binary)
        res = hclient.infer("toy", [inp], outputs=outs, headers=dict(AUTH), request_id="r1")
        assert res.get_response()["id"] == "r1"
        for n in ("z", "y"):
            got = res.as_numpy(n)
            assert got.dtype == np.float32 and got.shape == (1024,)
            assert got.tobytes() == want[n].tobytes(), (binary, n)
        out = res.get_output("z")
        assert ("parameters" in out) == binary  # binary_data_size only on binary outputs
    inp, outs = _http_infer(hclient, x, True)
    pending = [
        hclient.async_infer("toy", [inp], outputs=outs, headers=dict(AUTH)) for _ in range(4)
    ]
    for p in pending:
        assert p.get_result().as_numpy("z").tobytes() == want["z"].tobytes()
    inp = tch.InferInput("x", [1024], "FP32")  # no outputs named: all, binary (Triton's default)
    inp.set_data_from_numpy(x)
    assert (
        hclient.infer("toy", [inp], headers=dict(AUTH)).as_numpy("y").tobytes()
        == want["y"].tobytes()
    )


def test_raw_json_nested_data_and_requested_outputs(server):
    status, body = _post_json(
        server,
        "/v2/models/toy/versions/1/infer",
        {
            "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [[1, 2], [3, 4]]}],
            "outputs": [{"name": "z"}],
        },  # fmt: skip
    )
    assert status == 200, body
    assert body["model_name"] == "toy"
    assert [o["name"] for o in body["outputs"]] == ["z"]
    assert body["outputs"][0] == {
        "name": "z",
        "datatype": "FP32",
        "shape": [4],
        "data": [3, 5, 7, 9],
    }


def test_error_statuses_name_the_field(server):
    path = "/v2/models/toy/infer"
    good = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    status, body = _http(
        server, "POST", path, b'{"inputs": [', {"Content-Type": "application/json"}
    )
    assert status == 400 and "malformed JSON" in body["error"]
    status, body = _post_json(server, path, {"input": []})
    assert status == 400 and "request.inputs: missing" in body["error"]
    status, body = _post_json(
        server, path, {"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}
    )
    assert status == 400 and "inputs['x'].shape: missing" in body["error"]
    status, body = _post_json(
        server, path, {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}
    )
    assert status == 400 and "'x'" in body["error"] and "12 bytes" in body["error"], body
    status, body = _post_json(
        server,
        path,
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", 1]}]},
    )
    assert status == 400 and "inputs['x'].data" in body["error"]
    status, body = _post_json(
        server, path, {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    )
    assert status == 400 and "must be FP32" in body["error"]
    status, body = _post_json(server, path, {**good, "outputs": [{"name": "w"}]})
    assert status == 400 and "'w'" in body["error"]
    status, body = _post_json(server, "/v2/models/nope/infer", good)
    assert status == 404 and "unknown model 'nope'" in body["error"]
    status, body = _post_json(server, "/v2/models/toy/versions/999/infer", good)
    assert status == 404 and "'999'" in body["error"]
    status, _ = _http(server, "GET", "/v2/models/nope")
    assert status == 404
    status, _ = _http(server, "GET", "/v2/models/nope/ready")
    assert status == 404
    status, _ = _http(server, "GET", path)
    assert status == 405
    status, body = _http(server, "POST", path, b"{" + b" " * MAX_BODY + b"}")
    assert status == 413 and "exceeds" in body["error"]
    status, body = _http(
        server, "POST", path, json.dumps(good).encode(), {"Authorization": "Bearer x"}
    )
    assert status == 401 and "bearer token" in body["error"]
    status, body = _http(server, "GET", "/v2", headers={"Authorization": ""})
    assert status == 401
    status, body = _post_json(server, path, good)  # the server still answers after all that
    assert status == 200 and body["outputs"][0]["data"] == [3, 5]


def test_binary_extension_raw(server):
    x = np.arange(8, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }  # fmt: skip
    ).encode()
    status, body = _http(
        server, "POST", "/v2/models/toy/infer", header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert status == 200
    assert isinstance(body, bytes)
    hlen = len(body) - x.nbytes
    meta = json.loads(body[:hlen])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": x.nbytes}
    assert np.frombuffer(body[hlen:], np.float32).tolist() == (2 * x).tolist()
    status, body = _http(
        server, "POST", "/v2/models/toy/infer", header + x.tobytes()[:-4],
        {"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert status == 400 and "binary_data_size" in body["error"]


def test_health_paths_exact_and_open_without_token(server):
    for path, key in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        status, body = _http(server, "GET", path, headers={"Authorization": ""})
        assert status == 200 and body == {key: True}
    for path in ("/v2/health/liveX", "/v2/health/ready/", "/v2/health", "/", "/metrics"):
        status, _ = _http(server, "GET", path)
        assert status == 404, path


def test_metrics_port_serves_metrics_only(server, hclient):
    status, body = _http(server, "GET", "/metrics", port=server.metrics_port)
    assert status == 200 and b"terrazzo_requests_total" in body
    assert b'model="toy",status="OK"' in body  # HTTP requests counted like gRPC ones
    for path in ("/v2/health/ready", "/", "/metrics/x"):
        status, _ = _http(server, "GET", path, port=server.metrics_port)
        assert status == 404, path


# -- the codec, for datatypes the served toy model does not have ---------------------------------
def test_codec_bytes_bool_fp16_round_trip():
    header = {
        "parameters": {"timeout": 5_000_000, "binary_data_output": False},
        "inputs": [
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["héllo"], ["x"]]},
            {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
            {"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, -2.0]},
        ],
        "outputs": [{"name": "s"}, {"name": "h", "parameters": {"binary_data": True}}],
    }
    req, flags = build_request("m", "", header, memoryview(b""))
    assert req.parameters["timeout"].int64_param == 5_000_000
    assert flags == {"": False, "s": False, "h": True}
    raws = dict(zip([t.name for t in req.inputs], req.raw_input_contents, strict=True))
    assert raws["b"] == b"\x01\x00\x01"
    assert np.frombuffer(raws["h"], np.float16).tolist() == [0.5, -2.0]
    resp = pb.ModelInferResponse(model_name="m", model_version="1")
    for t in req.inputs:
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    resp.raw_output_contents.extend(req.raw_input_contents)
    body, hlen = encode_response(resp, flags)
    assert hlen is not None
    meta = json.loads(body[:hlen])
    outs = {o["name"]: o for o in meta["outputs"]}
    assert outs["s"]["data"] == ["héllo", "x"]
    assert outs["b"]["data"] == [True, False, True]
    assert outs["h"]["parameters"] == {"binary_data_size": 4}
    assert body[hlen:] == raws["h"]
    for datatype, data, why in (
        ("BOOL", [1], "true or false"),
        ("INT32", [1.5], "integers"),
        ("INT8", [300], "outside"),
        ("FP32", ["1.5"], "numbers"),
        ("FP32", [[1, 2], [3]], "inhomogeneous"),
        ("INT32", [[1, 2], [3]], "integers"),
    ):
        bad = {"inputs": [{"name": "b", "shape": [1], "datatype": datatype, "data": data}]}
        with pytest.raises(HTTPError, match=rf"inputs\['b'\].data: .*{why}") as e:
            build_request("m", "", bad, memoryview(b""))
        assert e.value.status == 400
    ok = {"inputs": [{"name": "u", "shape": [2], "datatype": "UINT64", "data": [2**64 - 1, 0]}]}
    req, _ = build_request("m", "", ok, memoryview(b""))
    assert np.frombuffer(req.raw_input_contents[0], "<u8").tolist() == [2**64 - 1, 0]


# -- TLS, token, admission and deadlines on the HTTP port (one slow server for all) -------------
@pytest.fixture(scope="module")
def slow_tls(libs, tmp_path_factory):
    from terrazzo.runtime import TLSOptions

    from .test_serve import _make_certs

    certs = _make_certs(tmp_path_factory.mktemp("http-certs"))
    tls = TLSOptions.from_files(certs["server.pem"], certs["server.key"], certs["ca.pem"])
    plan = chain_plan(libs, delay_s=0.5)
    with serve(plan, http_port=0, tls=tls, token=TOKEN, max_queue=1, max_rpcs=3) as s:
        yield s, certs


def _https(port: int, certs, body: dict | None, path: str, client_cert: bool = True, auth=True):
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    if client_cert:
        ctx.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"https://localhost:{port}{path}", data=data, headers=dict(AUTH) if auth else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tls_token_admission_and_deadline_statuses(slow_tls):
    import threading

    server, certs = slow_tls
    port = server.http_port
    good = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    path = "/v2/models/toy/infer"
    assert _https(port, certs, None, "/v2/health/ready", auth=False) == (200, {"ready": True})
    assert _https(port, certs, good, path, auth=False)[0] == 401
    with pytest.raises(OSError):  # mTLS: no client certificate, no answer (URLError/SSLError)
        _https(port, certs, None, "/v2/health/live", client_cert=False)
    with pytest.raises(OSError):  # plaintext to a TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10).read()
    results: list[tuple[int, object]] = []
    first = threading.Thread(target=lambda: results.append(_https(port, certs, good, path)))
    first.start()
    time.sleep(0.2)  # the first holds the only queue slot for >= 0.5 s
    status, body = _https(port, certs, good, path)
    first.join()
    assert status == 429 and "queue full" in body["error"], body
    assert results[0] == (200, results[0][1]) and results[0][1]["outputs"][0]["data"] == [3, 5]
    status, body = _https(port, certs, {**good, "parameters": {"timeout": 100_000}}, path)
    assert status == 504 and "deadline" in body["error"], body


def test_connection_limit_and_draining(slow_tls):
    import http.client
    import ssl

    server, certs = slow_tls
    ctx = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    ctx.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
    held = []
    for _ in range(3):  # max_rpcs=3 keep-alive connections hold every slot
        c = http.client.HTTPSConnection("localhost", server.http_port, context=ctx, timeout=10)
        c.request("GET", "/v2/health/live")
        assert c.getresponse().read() == b'{"live": true}'
        held.append(c)
    status, body = _https(server.http_port, certs, None, "/v2/health/live")
    assert status == 503 and "too many connections" in body["error"]
    for c in held:
        c.close()
    time.sleep(0.3)
    assert _https(server.http_port, certs, None, "/v2/health/live")[0] == 200
    server.gateway.draining.set()  # what stop() does first
    try:
        assert _https(server.http_port, certs, None, "/v2/health/ready")[0] == 503
        assert _https(server.http_port, certs, None, "/v2/models/toy/ready")[0] == 503
        good = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        status, body = _https(server.http_port, certs, good, "/v2/models/toy/infer")
        assert status == 503 and "shutting down" in body["error"]
    finally:
        server.gateway.draining.clear()


def test_cli_http_port_default_follows_triton():
    import argparse

    from terrazzo.commands.serve import _http_port

    def ns(port, http_port=None):
        return argparse.Namespace(port=port, http_port=http_port)

    assert _http_port(ns(8001)) == 8000
    assert _http_port(ns(0)) == 0
    assert _http_port(ns(8001, -1)) is None
    assert _http_port(ns(8001, 9000)) == 9000


# -- `terrazzo serve` end to end: the HTTP port next to gRPC --------------------------------------
def test_cli_serve_answers_http_like_grpc(cli_bundle, tmp_path):
    import re

    path, x, want = cli_bundle
    cli = _cleanup._Cli(path, tmp_path)
    try:
        m = re.search(r"KServe v2 HTTP on http://127\.0\.0\.1:(\d+)/v2", cli.out)
        assert m, cli.out
        h = tch.InferenceServerClient(f"127.0.0.1:{m.group(1)}")
        md = h.get_model_metadata(cli.name)
        (iname,) = [t["name"] for t in md["inputs"]]
        (oname,) = [t["name"] for t in md["outputs"]]
        inp = tch.InferInput(iname, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        got = h.infer(cli.name, [inp]).as_numpy(oname)
        h.close()
        g = tcg.InferenceServerClient(f"127.0.0.1:{cli.port}")
        ginp = tcg.InferInput(iname, list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        assert got.tobytes() == g.infer(cli.name, [ginp]).as_numpy(oname).tobytes()
        g.close()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    finally:
        cli.stop()
