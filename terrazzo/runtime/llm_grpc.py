"""KServe v2 generate over gRPC for LLM bundles: Triton's decoupled streaming convention.

Triton's LLM backends (vLLM, TensorRT-LLM) take ``text_input`` (BYTES) plus ``max_tokens``
and sampling inputs, and answer ``text_output`` (BYTES). On ``ModelStreamInfer`` they are
*decoupled*: one response per generated token, then an empty response whose parameter
``triton_final_response`` is true (what ``tritonclient.grpc``'s ``async_stream_infer(...,
enable_empty_final_response=True)`` waits for). ``ModelInfer`` answers the whole text at once.
``terrazzo serve BUNDLE --openai-port N --generate-grpc-port M`` serves this next to the
OpenAI/KServe-generate HTTP front, over the same :class:`~terrazzo.runtime.openai_front.LLMService`
(prefill and decode workers, continuous batching).

Optional inputs (each ``[1]``; also accepted as request parameters): ``max_tokens``,
``temperature``, ``top_p``, ``top_k``, ``random_seed``, ``stop`` (BYTES). A bad request
answers INVALID_ARGUMENT (unary) or a stream response carrying that error (streaming); the
requests of one stream are served in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from terrazzo.errors import ServingError
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc


def _bytes_tensor(name: str, text: str) -> tuple[Any, bytes]:
    data = text.encode()
    return (
        pb.ModelInferResponse.InferOutputTensor(name=name, datatype="BYTES", shape=[1]),
        len(data).to_bytes(4, "little") + data,
    )


def request_fields(request: Any) -> dict[str, Any]:
    """The request's inputs and parameters as plain values (``text_input`` as str)."""
    from terrazzo.runtime.tensors import WireTensor, to_numpy

    out: dict[str, Any] = {}
    for k, p in request.parameters.items():
        kind = p.WhichOneof("parameter_choice")
        if kind:
            out[k] = getattr(p, kind)
    for i, t in enumerate(request.inputs):
        if i < len(request.raw_input_contents):
            a = to_numpy(
                t.name, WireTensor(t.datatype, tuple(t.shape), request.raw_input_contents[i])
            )
        elif t.datatype == "BYTES":
            a = np.array(list(t.contents.bytes_contents), dtype=object)
        else:
            c = t.contents
            a = np.array(
                list(c.int_contents or c.int64_contents or c.fp32_contents or c.fp64_contents)
            )
        flat = np.asarray(a).reshape(-1)
        if flat.size == 0:
            continue
        v = flat[0]
        out[t.name] = v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
    if "random_seed" in out:
        out["seed"] = out["random_seed"]
    return out


class GenerateServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Health, metadata, ``ModelInfer`` and decoupled ``ModelStreamInfer`` for one LLM."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def ServerLive(self, request, context):  # noqa: N802 - the gRPC method names
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == self.service.name)

    def ModelMetadata(self, request, context):  # noqa: N802
        if request.name != self.service.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.service.name, versions=["1"], platform="terrazzo_llm",
            inputs=[T(name="text_input", datatype="BYTES", shape=[1]),
                    T(name="max_tokens", datatype="INT32", shape=[1])],
            outputs=[T(name="text_output", datatype="BYTES", shape=[1])],
        )  # fmt: skip

    def _prepare(self, request: Any) -> tuple[list[int], Any]:
        from terrazzo.runtime.openai_front import _params

        if request.model_name != self.service.name:
            raise LookupError(f"no model {request.model_name!r} (serving {self.service.name!r})")
        fields = request_fields(request)
        text = fields.get("text_input")
        if not isinstance(text, str):
            raise ServingError("input 'text_input' (BYTES [1]) is required")
        gen = self.service.generator
        ids = gen.encode(text)
        params = _params(fields, 16)
        gen._check(ids)
        return ids, params

    def _response(self, request: Any, text: str, final: bool) -> Any:
        resp = pb.ModelInferResponse(model_name=self.service.name, model_version="1", id=request.id)
        if text or not final:
            t, raw = _bytes_tensor("text_output", text)
            resp.outputs.append(t)
            resp.raw_output_contents.append(raw)
        resp.parameters["triton_final_response"].bool_param = final
        return resp

    def ModelInfer(self, request, context):  # noqa: N802
        try:
            ids, params = self._prepare(request)
        except LookupError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except ServingError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        _, text, _ = self.service.generator.generate(ids, params)
        return self._response(request, text, True)

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[Any]:  # noqa: N802
        for request in request_iterator:
            try:
                ids, params = self._prepare(request)
            except (LookupError, ServingError) as e:
                code = "NOT_FOUND" if isinstance(e, LookupError) else "INVALID_ARGUMENT"
                yield pb.ModelStreamInferResponse(error_message=f"{code}: {e}")
                continue
            for _, delta in self.service.generator.stream_text(ids, params):
                if delta:  # one response per token that completes text
                    yield pb.ModelStreamInferResponse(
                        infer_response=self._response(request, delta, False)
                    )
            yield pb.ModelStreamInferResponse(infer_response=self._response(request, "", True))


class GenerateGRPCServer:
    """The gRPC generate server on ``host:port`` (0: any free port)."""

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(GenerateServicer(service), self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise ServingError(f"--generate-grpc-port {port}: cannot bind {host}:{port}")

    def start(self) -> int:
        self.server.start()
        return self.port

    def stop(self) -> None:
        self.server.stop(2).wait()
