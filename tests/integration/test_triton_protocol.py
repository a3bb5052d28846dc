"""Conformance: every RPC the stock ``tritonclient.grpc.InferenceServerClient`` exposes, against a
served model (issue 15, deliverable 2)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from terrazzo.runtime import serve
from tests.integration.serving_helpers import chain_plan

pytestmark = pytest.mark.integration
URL: list[str] = []

# Every public method of the client, and the test below that exercises it.
COVERED = {
    "async_infer", "async_stream_infer", "close", "get_cuda_shared_memory_status",
    "get_inference_statistics", "get_log_settings", "get_model_config", "get_model_metadata",
    "get_model_repository_index", "get_server_metadata", "get_system_shared_memory_status",
    "get_trace_settings", "infer", "is_model_ready", "is_server_live", "is_server_ready",
    "load_model", "plugin", "register_cuda_shared_memory", "register_plugin",
    "register_system_shared_memory", "start_stream", "stop_stream", "unload_model",
    "unregister_cuda_shared_memory", "unregister_plugin", "unregister_system_shared_memory",
    "update_log_settings", "update_trace_settings",
}  # fmt: skip


@pytest.fixture(scope="module")
def client(libs: dict[str, str]) -> Iterator[tc.InferenceServerClient]:
    with serve(chain_plan(libs)) as server:
        URL[:] = [f"127.0.0.1:{server.port}"]
        c = tc.InferenceServerClient(URL[0])
        yield c
        c.close()


def _x(n: int = 4) -> tuple[np.ndarray, list[Any]]:
    x = np.arange(n, dtype=np.float32)
    inp = tc.InferInput("x", [n], "FP32")
    inp.set_data_from_numpy(x)
    return x, [inp]


def test_every_public_client_method_is_covered() -> None:
    public = {m for m in dir(tc.InferenceServerClient) if not m.startswith("_")}
    assert public == COVERED, f"new client methods to cover: {public - COVERED}"


def test_health_and_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("toy") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta.name == "terrazzo" and meta.version
    assert {"statistics", "system_shared_memory", "model_configuration"} <= set(meta.extensions)
    assert [t.name for t in client.get_model_metadata("toy").inputs] == ["x"]


def test_model_config_reports_compiled_names_dims_and_stages(
    client: tc.InferenceServerClient,
) -> None:
    cfg = client.get_model_config("toy").config
    assert cfg.name == "toy" and cfg.platform == "terrazzo" and cfg.max_batch_size == 0
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("x", 11, [-1])]  # FP32
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("z", [-1]), ("y", [-1])]
    groups = [(g.name, g.count, g.kind) for g in cfg.instance_group]
    assert groups == [("stage0:cpu", 1, 2), ("stage1:t4", 1, 2)]  # KIND_CPU: t4 falls back
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        client.get_model_config("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_infer_async_stream_and_statistics(client: tc.InferenceServerClient) -> None:
    before = client.get_inference_statistics("toy").model_stats[0]
    x, inputs = _x()
    np.testing.assert_allclose(client.infer("toy", inputs).as_numpy("z"), 2 * x + 1)
    done: queue.Queue[Any] = queue.Queue()
    client.async_infer("toy", inputs, callback=lambda result, error: done.put((result, error)))
    r, err = done.get(timeout=30)
    assert err is None and r.as_numpy("y").tolist() == (2 * x).tolist()
    streamed: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: streamed.put((result, error)))
    client.async_stream_infer("toy", inputs, request_id="s1")
    r, err = streamed.get(timeout=30)
    client.stop_stream()
    assert err is None and r.get_response().id == "s1"
    with pytest.raises(InferenceServerException):
        client.infer("toy", [tc.InferInput("nope", [1], "FP32")])
    stats = client.get_inference_statistics("toy").model_stats[0]
    assert (stats.name, stats.version) == ("toy", "1")
    assert stats.inference_count - before.inference_count == 3
    assert stats.execution_count - before.execution_count == 3
    s = stats.inference_stats
    assert s.success.count - before.inference_stats.success.count == 3
    assert s.fail.count - before.inference_stats.fail.count == 1
    for phase in (s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert phase.count == s.success.count and phase.ns > 0
    # the phases lie within the whole request's time
    assert s.compute_infer.ns < s.success.ns
    assert stats.last_inference > 0
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")
    assert [m.name for m in client.get_inference_statistics().model_stats] == ["toy"]


def test_repository_index_and_refused_load_on_a_single_bundle(
    client: tc.InferenceServerClient,
) -> None:
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [("toy", "1", "READY")]
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException, match="model-control-mode explicit"):
            call("toy")


def test_system_shared_memory_inputs_and_outputs(client: tc.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32)
    h_in = shm.create_shared_memory_region("tz_in", "/tz_conf_in", x.nbytes)
    h_out = shm.create_shared_memory_region("tz_out", "/tz_conf_out", x.nbytes)
    try:
        shm.set_shared_memory_region(h_in, [x])
        client.register_system_shared_memory("tz_in", "/tz_conf_in", x.nbytes)
        client.register_system_shared_memory("tz_out", "/tz_conf_out", x.nbytes)
        status = client.get_system_shared_memory_status().regions
        assert {n: (r.key, r.byte_size) for n, r in status.items()} == {
            "tz_in": ("/tz_conf_in", x.nbytes),
            "tz_out": ("/tz_conf_out", x.nbytes),
        }
        inp = tc.InferInput("x", [8], "FP32")
        inp.set_shared_memory("tz_in", x.nbytes)
        out = tc.InferRequestedOutput("z")
        out.set_shared_memory("tz_out", x.nbytes)
        r = client.infer("toy", [inp], outputs=[out])
        assert r.get_output("z").parameters["shared_memory_region"].string_param == "tz_out"
        got = shm.get_contents_as_numpy(h_out, np.float32, [8])
        np.testing.assert_allclose(got, 2 * x + 1)
        with pytest.raises(InferenceServerException, match="already registered"):
            client.register_system_shared_memory("tz_in", "/tz_conf_in", x.nbytes)
        with pytest.raises(InferenceServerException, match="exceeds"):
            client.register_system_shared_memory("big", "/tz_conf_in", x.nbytes * 100)
        client.unregister_system_shared_memory("tz_in")
        assert list(client.get_system_shared_memory_status().regions) == ["tz_out"]
        client.unregister_system_shared_memory()
        assert not client.get_system_shared_memory_status().regions
    finally:
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_cuda_shared_memory_is_unimplemented_with_a_clear_message(
    client: tc.InferenceServerClient,
) -> None:
    calls = [
        lambda: client.get_cuda_shared_memory_status(),
        lambda: client.register_cuda_shared_memory("g", b"\0" * 64, 0, 64),
        lambda: client.unregister_cuda_shared_memory("g"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException, match="CUDA shared memory") as e:
            call()
        assert e.value.status() == "StatusCode.UNIMPLEMENTED"


def test_trace_and_log_settings_are_accepted_and_echoed(client: tc.InferenceServerClient) -> None:
    assert client.get_trace_settings().settings["trace_level"].value == ["OFF"]
    got = client.update_trace_settings(settings={"trace_rate": "5"}).settings
    assert got["trace_rate"].value == ["5"]
    assert client.get_log_settings().settings["log_info"].bool_param is True
    got = client.update_log_settings({"log_verbose_level": 2}).settings
    assert got["log_verbose_level"].uint32_param == 2


def test_plugins_and_close(client: tc.InferenceServerClient) -> None:
    from tritonclient.grpc.auth import BasicAuth

    client.register_plugin(BasicAuth("u", "p"))
    assert client.plugin() is not None
    assert client.is_server_live()  # the plugin's header does not upset the server
    client.unregister_plugin()
    assert client.plugin() is None
    other = tc.InferenceServerClient(URL[0])
    assert other.is_server_live()
    other.close()
    with pytest.raises(ValueError):  # a closed client's channel refuses calls
        other.is_server_live()
