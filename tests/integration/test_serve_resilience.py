"""Hung workers, admission control, many streams, the mTLS worker hop (issue 16, runtime part).

Real gateways and worker processes on loopback, driven by the stock tritonclient or raw gRPC
stubs; a hung worker is a SIGSTOPped process.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.runtime import serve
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from tests.integration.serving_helpers import _infer, chain_plan

pytestmark = pytest.mark.integration


def _row(server, name):
    return next(r for r in server.workers() if r["worker"] == name)


def _health(port: int) -> int:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        return (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        )
    finally:
        ch.close()


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("stage_timeout_s", [1.0, None], ids=["stage-deadline-1s", "default"])
def test_sigstop_only_worker_fails_fast_health_follows_and_service_resumes(libs, stage_timeout_s):
    # 1 s: the stage deadline fails the call; default (30 s, no SLA): the heartbeats condemn
    # the worker after 3 x 0.5 s and its call in flight is cancelled with UNAVAILABLE.
    with serve(chain_plan(libs, replicas=1), stage_timeout_s=stage_timeout_s) as server:
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(_infer(c, x).as_numpy("z"), 2 * x + 1)
        assert _health(server.port) == health_pb2.HealthCheckResponse.SERVING
        pid = _row(server, "stage0/r0")["handle"].pid
        os.kill(pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            # No client deadline: the server's 30 s default must not be what ends the request.
            t0 = time.monotonic()
            with pytest.raises(InferenceServerException) as e:
                _infer(c, x)
            waited = time.monotonic() - t0
            assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
            assert waited < 3.0, f"request took {waited:.1f} s to fail"
            assert "stage 0" in e.value.message()
            # Health reflects the hung worker while it is out (or the restart is already done).
            seen_down = False
            end = time.monotonic() + 5
            while time.monotonic() < end and not seen_down:
                seen_down = (
                    not c.is_model_ready("toy")
                    or _health(server.port) != health_pb2.HealthCheckResponse.SERVING
                    or _row(server, "stage0/r0")["restarts"] >= 1
                )
                time.sleep(0.01)
            assert seen_down
            # The hung process is SIGKILLed and replaced; service resumes quickly.
            first_ok = None
            fails = 0
            end = time.monotonic() + 15
            while time.monotonic() < end:
                try:
                    z = _infer(c, x, client_timeout=3).as_numpy("z")
                except InferenceServerException as err:
                    assert err.status() == "StatusCode.UNAVAILABLE", err
                    fails += 1
                    time.sleep(0.02)
                    continue
                np.testing.assert_array_equal(z, 2 * x + 1)
                first_ok = time.monotonic()
                break
            assert first_ok is not None, "service did not resume"
            row = _row(server, "stage0/r0")
            assert row["restarts"] == 1 and row["handle"].pid != pid
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # the stopped worker is gone, not lingering
            assert c.is_model_ready("toy")
            assert _health(server.port) == health_pb2.HealthCheckResponse.SERVING
            outage = first_ok - t_stop
            # detection (3 heartbeats of 0.5 s) + restart; the restart itself must take < 3 s
            assert outage < 6.0, f"outage {outage:.1f} s"
            print(f"single replica SIGSTOP: fail after {waited:.2f} s, back after {outage:.2f} s")
        finally:
            _resume(pid)
            c.close()


def test_sigstop_one_of_two_replicas_costs_under_a_second(libs):
    with serve(chain_plan(libs, replicas=2), stage_timeout_s=1.0) as server:
        url = f"127.0.0.1:{server.port}"
        stop = threading.Event()
        lock = threading.Lock()
        stats = {"ok": 0, "failed": 0, "wrong": 0}
        fail_times: list[float] = []

        def loop(seed: int) -> None:
            c = tc.InferenceServerClient(url)
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                x = rng.standard_normal(16).astype(np.float32)
                try:
                    z = _infer(c, x, client_timeout=10).as_numpy("z")
                except InferenceServerException:
                    with lock:
                        stats["failed"] += 1
                        fail_times.append(time.monotonic())
                    continue
                with lock:
                    stats["ok" if np.allclose(z, 2 * x + 1, rtol=1e-6) else "wrong"] += 1
            c.close()

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        pid = _row(server, "stage0/r0")["handle"].pid
        os.kill(pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            end = time.monotonic() + 20
            while time.monotonic() < end and _row(server, "stage0/r0")["restarts"] < 1:
                time.sleep(0.05)
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=20)
            _resume(pid)
        assert _row(server, "stage0/r0")["restarts"] == 1
        assert stats["wrong"] == 0, stats
        assert stats["ok"] > 50, stats
        failed_span = (max(fail_times) - min(fail_times)) if fail_times else 0.0
        assert failed_span <= 1.0, (stats, failed_span)
        assert all(t >= t_stop for t in fail_times)
        print(f"two replicas SIGSTOP: {stats}, failures spread over {failed_span:.2f} s")


def test_admission_control_refuses_early_and_server_stays_healthy(libs):
    with serve(
        chain_plan(libs, delay_s=0.3),
        max_message_bytes=32 << 20,
        max_inflight_bytes=8 << 20,
        max_queue=2,
    ) as server:
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        # Over the in-flight byte budget on its own: refused at once, naming the budget.
        big = np.zeros((12 << 20) // 4, np.float32)
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            _infer(c, big)
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "allowed in flight" in e.value.message()
        # no worker was involved (the stage would have taken 0.3 s); timing is noisy here
        assert (
            server.metrics.requests.labels(model="toy", status="RESOURCE_EXHAUSTED")._value.get()
            == 1
        )  # noqa: SLF001
        assert (
            server.metrics.stage_latency.labels(model="toy", stage="0", device="cpu")._sum.get()
            == 0
        )  # noqa: SLF001
        assert time.monotonic() - t0 < 2.0
        # Over gRPC's message cap: refused by gRPC itself before the handler.
        with pytest.raises(InferenceServerException) as e:
            _infer(c, np.zeros((40 << 20) // 4, np.float32))
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        # Concurrency bound: 6 at once with room for 2.
        codes: list[str] = []
        lock = threading.Lock()

        def one() -> None:
            cc = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
            try:
                _infer(cc, np.ones(4, np.float32))
                code = "OK"
            except InferenceServerException as err:
                code = str(err.status())
            with lock:
                codes.append(code)
            cc.close()

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count("OK") >= 2 and "StatusCode.RESOURCE_EXHAUSTED" in codes, codes
        assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
        assert server.gateway.inflight() == 0 and server.gateway.inflight_bytes() == 0
        assert c.is_server_ready() and c.is_model_ready("toy")
        x = np.arange(3, dtype=np.float32)
        np.testing.assert_array_equal(_infer(c, x).as_numpy("z"), 2 * x + 1)
        c.close()


def test_200_concurrent_streams(libs):
    n = 200
    with serve(chain_plan(libs)) as server:
        channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(4)]
        barrier = threading.Barrier(n, timeout=60)
        errors: list[str] = []
        ok = [0]
        lock = threading.Lock()

        def stream(i: int) -> None:
            stub = pb_grpc.GRPCInferenceServiceStub(channels[i % len(channels)])
            xs = [np.full(4, i + k, np.float32) for k in range(3)]

            def requests():
                for k, x in enumerate(xs):
                    req = pb.ModelInferRequest(model_name="toy", id=f"{i}-{k}")
                    req.inputs.add(name="x", datatype="FP32", shape=[4])
                    req.raw_input_contents.append(x.tobytes())
                    yield req
                    if k == 0:
                        barrier.wait()  # all 200 streams are open at once

            try:
                for k, resp in enumerate(stub.ModelStreamInfer(requests(), timeout=120)):
                    if resp.error_message:
                        raise RuntimeError(resp.error_message)
                    idx = [o.name for o in resp.infer_response.outputs].index("z")
                    z = np.frombuffer(resp.infer_response.raw_output_contents[idx], np.float32)
                    if not np.array_equal(z, 2 * xs[k] + 1):
                        raise RuntimeError(f"stream {i} answer {k} is wrong")
                    with lock:
                        ok[0] += 1
            except Exception as e:  # grpc.RpcError or a wrong answer: recorded, asserted below
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for ch in channels:
            ch.close()
        assert not errors, errors[:3]
        assert ok[0] == 3 * n


def _client_identity(name: str):
    """A key and self-signed certificate made here (not the gateway's): must be refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _stage0_request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="stage0")
    req.inputs.add(name="x", datatype="FP32", shape=[2])
    req.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    return req


def test_internal_mtls_hop(libs):
    from terrazzo.runtime.internal_tls import WORKER_NAME

    with serve(chain_plan(libs), internal_tls=True) as server:
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.arange(5, dtype=np.float32)
        np.testing.assert_array_equal(_infer(c, x).as_numpy("z"), 2 * x + 1)
        c.close()
        row = _row(server, "stage0/r0")
        handle = row["handle"]
        assert handle.cert and b"BEGIN CERTIFICATE" in handle.cert
        assert server._worker_opts.token == ""  # noqa: SLF001  no token is sent at all
        opts = [("grpc.ssl_target_name_override", WORKER_NAME)]
        # 1. plaintext to the worker port: no TLS handshake, no answer
        ch = grpc.insecure_channel(handle.address)
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_stage0_request(), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
        # 2. TLS with a client certificate the worker does not trust (made in this test)
        cert, key = _client_identity("terrazzo-gateway")
        creds = grpc.ssl_channel_credentials(handle.cert, key, cert)
        ch = grpc.secure_channel(handle.address, creds, options=opts)
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_stage0_request(), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
        # 3. TLS without any client certificate
        ch = grpc.secure_channel(
            handle.address, grpc.ssl_channel_credentials(handle.cert), options=opts
        )
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_stage0_request(), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
        # 4. the worker presents its own pinned certificate: a server that is not it is refused
        other_cert, _ = _client_identity(WORKER_NAME)
        gw = server._tls  # noqa: SLF001
        ch = grpc.secure_channel(
            handle.address,
            grpc.ssl_channel_credentials(other_cert, gw.key_pem, gw.cert_pem),
            options=opts,
        )
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_stage0_request(), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
        # positive control: the gateway's identity and the pinned worker certificate work
        ch = grpc.secure_channel(
            handle.address,
            grpc.ssl_channel_credentials(handle.cert, gw.key_pem, gw.cert_pem),
            options=opts,
        )
        resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_stage0_request(), timeout=5)
        assert np.array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), [2, 2])
        ch.close()


def test_crash_loop_backs_off_and_gives_up_in_one_line(libs, tmp_path, caplog):
    import shutil

    lib = tmp_path / "double.so"
    shutil.copy(libs["double"], lib)
    plan = chain_plan(dict(libs, double=str(lib)))
    caplog.set_level(logging.WARNING, logger="terrazzo.runtime")
    with serve(plan, run_dir_base=str(tmp_path), max_restarts=3, restart_backoff_s=0.05) as server:
        run_dir = server.run_dir.path
        assert len([p for p in run_dir.iterdir() if p.is_dir()]) == 2  # one per worker
        lib.unlink()  # every restart now fails while loading its stage
        pid = _row(server, "stage0/r0")["handle"].pid
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 60
        while time.monotonic() < end and not _row(server, "stage0/r0")["gave_up"]:
            time.sleep(0.05)
        row = _row(server, "stage0/r0")
        assert row["gave_up"] and not row["healthy"]
        assert not server.gateway.model_ready()
        lines = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "stage0/r0 (stage 0" in lines[0] and "last exit status 1" in lines[0], lines[0]
        # the killed worker's and the failed starts' temp dirs are gone: only stage1's is left
        left = [p.name for p in run_dir.iterdir() if p.is_dir()]
        assert len(left) == 1 and left[0].startswith("stage1-r0"), left
    assert not any(tmp_path.glob("terrazzo-serve-*"))
