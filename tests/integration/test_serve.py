"""Serving end to end with the stock tritonclient: gateway + worker processes running TVM-built stages."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, TLSOptions, serve
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from tests.integration.serving_helpers import RELAX, _build_libs, _infer, chain_plan  # noqa: F401

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-value"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def main_server(libs):
    with serve(
        chain_plan(libs), metrics_port=0, token=TOKEN, max_message_bytes=100 << 20
    ) as server:
        yield server


@pytest.fixture()
def client(main_server):
    c = tc.InferenceServerClient(f"127.0.0.1:{main_server.port}")
    yield c
    c.close()


def test_metadata_and_readiness_with_stock_client(client):
    assert client.is_server_live(headers=AUTH)
    assert client.is_server_ready(headers=AUTH)
    assert client.is_model_ready("toy", headers=AUTH)
    assert not client.is_model_ready("nope", headers=AUTH)
    assert client.get_server_metadata(headers=AUTH).name == "terrazzo"
    meta = client.get_model_metadata("toy", headers=AUTH)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1])]
    assert [t.name for t in meta.outputs] == ["z", "y"]


def test_workers_fork_from_one_tvm_process_without_torch(main_server):
    """Workers of built-in runners are forked from the fork server, which imported TVM but not torch."""
    parents = set()
    for row in main_server.workers():
        pid = row["handle"].pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtvm" in maps and "libtorch" not in maps, row["worker"]
        parents.add(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
    assert (
        len(parents) == 1 and os.getpid() not in parents
    )  # one fork server is every worker's parent


def test_infer_round_trip_through_two_worker_processes(client):
    x = np.linspace(-3, 3, 17, dtype=np.float32)
    res = _infer(client, x, headers=AUTH, request_id="req-42")
    np.testing.assert_allclose(res.as_numpy("z"), 2 * x + 1, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("y"), 2 * x, rtol=1e-6)
    resp = res.get_response()
    assert resp.id == "req-42" and resp.model_name == "toy"
    assert len(resp.raw_output_contents) == 2 and not resp.outputs[0].HasField("contents")


def test_typed_contents_accepted_and_mixed_rejected(main_server):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{main_server.port}"))
    md = tuple(AUTH.items())
    req = pb.ModelInferRequest(model_name="toy")
    t = req.inputs.add(name="x", datatype="FP32", shape=[3])
    t.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    resp = stub.ModelInfer(req, metadata=md)
    got = {
        o.name: np.frombuffer(raw, np.float32)
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }
    np.testing.assert_array_equal(got["z"], [3.0, 5.0, 7.0])
    req.raw_input_contents.append(np.ones(3, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, metadata=md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in e.value.details()


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "payload", "needle"),
    [
        ("x", "FP64", [4], np.ones(4, np.float64).tobytes(), "must be FP32"),
        ("x", "FP32", [2, 2], np.ones(4, np.float32).tobytes(), "shape"),
        ("x", "FP32", [4], np.ones(3, np.float32).tobytes(), "expected 16 bytes"),
        ("q", "FP32", [4], np.ones(4, np.float32).tobytes(), "no input named 'q'"),
    ],
)
def test_bad_tensor_is_invalid_argument_naming_it(
    main_server, name, datatype, shape, payload, needle
):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{main_server.port}"))
    req = pb.ModelInferRequest(model_name="toy")
    req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.append(payload)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, metadata=tuple(AUTH.items()))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details() and repr(name) in e.value.details()


def test_unknown_model_and_output(client):
    with pytest.raises(InferenceServerException) as e:
        _infer(client, np.ones(2, np.float32), model="nope", headers=AUTH)
    assert e.value.status() == "StatusCode.NOT_FOUND"
    inp = tc.InferInput("x", [2], "FP32")
    inp.set_data_from_numpy(np.ones(2, np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("toy", [inp], outputs=[tc.InferRequestedOutput("nope")], headers=AUTH)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "'nope'" in e.value.message()


def test_bearer_token_required(client):
    with pytest.raises(InferenceServerException) as e:
        _infer(client, np.ones(2, np.float32))
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as e:
        _infer(client, np.ones(2, np.float32), headers={"authorization": "Bearer wrong"})
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"


def test_health_service_on_same_port(main_server):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{main_server.port}"))
    assert (
        stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_64_mib_tensor_round_trip_and_oversize_rejected(client):
    x = np.random.default_rng(0).standard_normal(16 << 20).astype(np.float32)  # 64 MiB
    res = _infer(client, x, headers=AUTH, outputs=[tc.InferRequestedOutput("z")])
    np.testing.assert_allclose(res.as_numpy("z"), 2 * x + 1, rtol=1e-6)
    del res
    big = np.zeros((101 << 20) // 4, np.float32)  # over the 100 MiB limit
    with pytest.raises(InferenceServerException) as e:
        _infer(client, big, headers=AUTH)
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live(headers=AUTH)


def test_stream_infer(client):
    results: list = []
    client.start_stream(
        callback=lambda result, error: results.append((result, error)), headers=AUTH
    )
    try:
        for k in range(3):
            inp = tc.InferInput("x", [2], "FP32")
            inp.set_data_from_numpy(np.full(2, k, np.float32))
            client.async_stream_infer("toy", [inp], request_id=str(k))
        end = time.monotonic() + 10
        while len(results) < 3 and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        client.stop_stream()
    assert len(results) == 3 and all(err is None for _, err in results)
    by_id = {r.get_response().id: r.as_numpy("z") for r, _ in results}
    for k in range(3):
        np.testing.assert_array_equal(by_id[str(k)], np.full(2, 2 * k + 1, np.float32))


def test_metrics_and_access_log(main_server, client, caplog):
    caplog.set_level(logging.INFO, logger="terrazzo.runtime.access")
    _infer(client, np.ones(3, np.float32), headers=AUTH, request_id="logged-1")
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{main_server.metrics_port}/metrics")
        .read()
        .decode()
    )
    assert 'terrazzo_requests_total{model="toy",status="OK"}' in body
    assert 'terrazzo_request_latency_seconds_bucket{le="0.5",model="toy"}' in body
    assert 'terrazzo_stage_latency_seconds_count{device="t4",model="toy",stage="1"}' in body
    assert 'terrazzo_device_busy_seconds_total{device="cpu"}' in body
    assert "terrazzo_queue_depth" in body and "terrazzo_worker_up" in body
    lines = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "terrazzo.runtime.access"
    ]
    line = next(entry for entry in lines if entry["id"] == "logged-1")
    assert (
        line["status"] == "OK"
        and line["workers"] == ["stage0/r0", "stage1/r0"]
        and line["latency_s"] > 0
    )
    assert TOKEN not in caplog.text


# -- deadlines, cancellation, readiness after a crash (one slow stage) ----------------------------


@pytest.fixture(scope="module")
def slow_server(libs):
    with serve(chain_plan(libs, delay_s=1.5), default_timeout_s=0.5) as server:
        yield server


def test_client_deadline_and_server_default_timeout(slow_server):
    c = tc.InferenceServerClient(f"127.0.0.1:{slow_server.port}")
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        _infer(c, np.ones(2, np.float32), client_timeout=0.2)
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - t0 < 0.6
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        _infer(c, np.ones(2, np.float32))  # no client deadline: the server's 0.5 s default applies
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert 0.4 < time.monotonic() - t0 < 1.2
    # The worker stopped the abandoned 1.5 s executions: stage 1 never ran for them.
    stage1 = slow_server.metrics.stage_latency.labels(model="toy", stage="1", device="t4")
    assert stage1._sum.get() == 0.0  # noqa: SLF001
    c.close()


def test_cancel_propagates_to_worker(slow_server):
    c = tc.InferenceServerClient(f"127.0.0.1:{slow_server.port}")
    inp = tc.InferInput("x", [2], "FP32")
    inp.set_data_from_numpy(np.ones(2, np.float32))
    done = threading.Event()
    fut = c.async_infer("toy", [inp], callback=lambda result, error: done.set(), timeout=10_000_000)
    time.sleep(0.2)
    fut.cancel()
    # The worker noticed: a follow-up request with a long budget is not stuck behind 1.5 s of dead work.
    t0 = time.monotonic()
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{slow_server.port}"))
    req = pb.ModelInferRequest(model_name="toy")
    req.inputs.add(name="x", datatype="FP32", shape=[1])
    req.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    req.parameters["timeout"].int64_param = 0
    with pytest.raises(grpc.RpcError) as e:  # 0.5 s server default < 1.5 s stage
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 1.0
    c.close()


def test_kill_single_replica_readiness_and_restart(slow_server):
    c = tc.InferenceServerClient(f"127.0.0.1:{slow_server.port}")
    row = next(r for r in slow_server.workers() if r["worker"] == "stage1/r0")
    os.kill(row["handle"].pid, signal.SIGKILL)
    end = time.monotonic() + 2
    while c.is_model_ready("toy") and time.monotonic() < end:
        time.sleep(0.02)
    assert not c.is_model_ready("toy") and not c.is_server_ready()
    end = time.monotonic() + 60
    while not c.is_model_ready("toy") and time.monotonic() < end:
        time.sleep(0.1)
    assert c.is_model_ready("toy")
    assert next(r for r in slow_server.workers() if r["worker"] == "stage1/r0")["restarts"] == 1
    c.close()


# -- TLS / mTLS ----------------------------------------------------------------------------------


def _make_certs(out: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def cert(subject, issuer, pub, signer, ca=False, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(signer, hashes.SHA256())

    files = {}

    def write(name, obj):
        p = out / name
        if hasattr(obj, "private_bytes"):
            p.write_bytes(
                obj.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        else:
            p.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        files[name] = p

    for ca_name in ("ca", "other_ca"):
        k = key()
        write(f"{ca_name}.key", k)
        write(f"{ca_name}.pem", cert(ca_name, ca_name, k.public_key(), k, ca=True))
    ca_key = ec.generate_private_key  # placeholder to keep names short below
    del ca_key
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for who, ca_name, san in (
        ("server", "ca", "localhost"),
        ("client", "ca", None),
        ("rogue", "other_ca", None),
    ):
        k = key()
        signer = load_pem_private_key(files[f"{ca_name}.key"].read_bytes(), None)
        write(f"{who}.key", k)
        write(f"{who}.pem", cert(who, ca_name, k.public_key(), signer, san=san))
    return files


# -- DAG routing and mTLS on one server ------------------------------------------------------------


def dag_plan(libs: dict[str, str]) -> ServingPlan:
    """x -> a = 2x (stage0) ; x -> b = x + 1 (stage1, independent) ; out = a - b (stage2)."""
    return ServingPlan(
        "dag",
        (TensorSpec("x", "FP32", (4,)),),
        (TensorSpec("out", "FP32", (4,)),),
        (
            StageSpec(
                0,
                "cpu",
                ("x",),
                ("a",),
                RunnerSpec(RELAX, {"path": libs["double"], "inputs": ["x"], "outputs": ["a"]}, 0.3),
            ),
            StageSpec(
                1,
                "cpu",
                ("x",),
                ("b",),
                RunnerSpec(RELAX, {"path": libs["addone"], "inputs": ["x"], "outputs": ["b"]}, 0.3),
            ),
            StageSpec(
                2,
                "cpu",
                ("a", "b"),
                ("out",),
                RunnerSpec(
                    RELAX, {"path": libs["combine"], "inputs": ["a", "b"], "outputs": ["out"]}
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def dag_tls(libs, tmp_path_factory):
    """The DAG plan served with mTLS (one server for both concerns): (server, certificate paths)."""
    certs = _make_certs(tmp_path_factory.mktemp("certs"))
    tls = TLSOptions.from_files(certs["server.pem"], certs["server.key"], certs["ca.pem"])
    with serve(dag_plan(libs), tls=tls) as server:
        yield server, certs


def _tls_client(
    port: int, certs: dict[str, Path], who: str | None = "client"
) -> tc.InferenceServerClient:
    if who is None:
        return tc.InferenceServerClient(
            f"localhost:{port}", ssl=True, root_certificates=str(certs["ca.pem"])
        )
    return tc.InferenceServerClient(
        f"localhost:{port}",
        ssl=True,
        root_certificates=str(certs["ca.pem"]),
        private_key=str(certs[f"{who}.key"]),
        certificate_chain=str(certs[f"{who}.pem"]),
    )


def test_dag_stages_route_values_by_name(dag_tls):
    server, certs = dag_tls
    c = _tls_client(server.port, certs)
    x = np.arange(4, dtype=np.float32)
    _infer(c, x, model="dag")  # warm
    t0 = time.monotonic()
    out = _infer(c, x, model="dag").as_numpy("out")
    elapsed = time.monotonic() - t0
    np.testing.assert_array_equal(out, 2 * x - (x + 1))
    assert elapsed < 0.55, f"independent stages ran one after the other ({elapsed:.2f} s)"
    c.close()


def test_mtls(dag_tls):
    server, certs = dag_tls
    x = np.arange(4, dtype=np.float32)
    good = _tls_client(server.port, certs)
    np.testing.assert_array_equal(_infer(good, x, model="dag").as_numpy("out"), x - 1)
    rogue = _tls_client(server.port, certs, "rogue")
    no_cert = _tls_client(server.port, certs, None)
    plain = tc.InferenceServerClient(f"localhost:{server.port}")
    for bad in (rogue, no_cert, plain):
        with pytest.raises(InferenceServerException):
            _infer(bad, x, model="dag", client_timeout=5)
    for cl in (good, rogue, no_cert, plain):
        cl.close()
