"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, in the worker's own event loop.

The stubs are tritonclient's generated ones (`tritonclient.grpc.service_pb2*`), the servicer is optic's: the
same views, pipeline, batcher, limits and API keys as the REST routes. Tensors travel as raw contents both
ways (the typed `contents` fields are read too). Calls optic does not serve (streaming, model load and
unload, shared memory, statistics, tracing) answer UNIMPLEMENTED. Each worker binds `OPTIC_GRPC_PORT` with
SO_REUSEPORT, as the HTTP port is shared, so several workers serve one port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from service.auth import presented_key
from service.errors import OpticError, ShuttingDown, Unauthorized
from service.v2.rest import EXTENSIONS, V2App
from service.v2.tensors import (
    NUMPY_OF,
    BadTensor,
    InferRequest,
    Tensor,
    Wanted,
    check_shape,
    element_count,
    from_raw,
    to_raw,
)
from service.v2.views import Views, infer

if TYPE_CHECKING:
    from service.service import Optic

log = logging.getLogger("bentoml.optic")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The typed contents field of each datatype (when a client sends no raw contents).
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
INFER_LABEL = "grpc:ModelInfer"
META_LABEL = "grpc"


def _parameter(params: Any, key: str) -> Any:
    if key not in params:
        return None
    value = params[key]
    return getattr(value, value.WhichOneof("parameter_choice") or "int64_param")


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Optic, v2: V2App) -> None:
        self.service = service
        self.v2 = v2  # its views follow the served versions
        self.guard = service.guard

    @property
    def views(self) -> Views:
        assert self.v2.views is not None
        return self.v2.views

    async def _fail(self, context: grpc.aio.ServicerContext, exc: OpticError, label: str) -> None:
        self.service.metrics.errors.labels(label, exc.reason).inc()
        await context.abort(_CODES.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        """API keys from the call's metadata (`authorization: Bearer KEY` or `x-api-key: KEY`); the drain."""
        keys = self.guard.keys
        if keys.enabled:
            metadata = [(k.lower().encode(), v.encode() if isinstance(v, str) else v)
                        for k, v in context.invocation_metadata() or ()]  # fmt: skip
            key = presented_key(metadata)
            key_id = keys.identify(key) if key is not None else None
            if key_id is None:
                raise Unauthorized(
                    "a valid API key is needed: send it as `authorization: Bearer KEY` or `x-api-key: KEY` metadata"
                    if key is None
                    else "the API key sent is not valid"
                )
            self.guard.count_key(key_id)
        if self.guard.drain.draining:
            raise ShuttingDown("optic is shutting down: send this request to another replica")

    async def _answer(self, context: grpc.aio.ServicerContext, label: str, make: Callable[[], Any]) -> Any:
        try:
            self._check(context)
            return make()
        except OpticError as exc:
            await self._fail(context, exc, label)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=await self.service.__is_ready__())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        def make() -> Any:
            try:
                self.views.get(request.name).resolve(request.version or None)
            except OpticError:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=not self.guard.drain.draining)

        return await self._answer(context, META_LABEL, make)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from service.service import optic_version

        return await self._answer(
            context,
            META_LABEL,
            lambda: service_pb2.ServerMetadataResponse(name="optic", version=optic_version(), extensions=EXTENSIONS),
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        def make() -> Any:
            view = self.views.get(request.name)
            data = view.metadata(view.resolve(request.version or None))
            return json_format.ParseDict(data, service_pb2.ModelMetadataResponse())

        return await self._answer(context, META_LABEL, make)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        def make() -> Any:
            view = self.views.get(request.name)
            model = view.resolve(request.version or None)
            config = json_format.ParseDict(view.config(model, self.service.settings), model_config_pb2.ModelConfig())
            return service_pb2.ModelConfigResponse(config=config)

        return await self._answer(context, META_LABEL, make)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        def make() -> Any:
            entries = self.views.index(ready_only=request.ready)
            return service_pb2.RepositoryIndexResponse(
                models=[service_pb2.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
            )

        return await self._answer(context, META_LABEL, make)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._check(context)
            with self.guard.drain.track():
                parsed = parse_request(request)
                result = await infer(self.service, self.views, parsed, "v2-grpc")
        except OpticError as exc:
            await self._fail(context, exc, INFER_LABEL)
            return None
        response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version)
        if result.id is not None:
            response.id = result.id
        for tensor in result.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(to_raw(tensor))
        return response


def parse_request(request: Any) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadTensor(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, entry in enumerate(request.inputs):
        shape = check_shape(entry.name, list(entry.shape))
        if raw:
            data = from_raw(entry.name, entry.datatype, shape, raw[i])
        elif entry.datatype == "BYTES":
            data = list(entry.contents.bytes_contents)
            if len(data) != element_count(shape):
                raise BadTensor(f"input {entry.name!r}: {len(data)} BYTES elements for shape {shape}")
        else:
            field = _CONTENTS.get(entry.datatype)
            if field is None:
                raise BadTensor(f"input {entry.name!r}: datatype {entry.datatype!r} needs raw_input_contents")
            values = np.asarray(getattr(entry.contents, field))
            if values.size != element_count(shape):
                raise BadTensor(f"input {entry.name!r}: {values.size} {field} for shape {shape}")
            data = values.astype(NUMPY_OF[entry.datatype]).reshape(shape)
        inputs.append(Tensor(entry.name, entry.datatype, shape, data))
    outputs = None
    if request.outputs:
        outputs = []
        for wanted in request.outputs:
            count = _parameter(wanted.parameters, "classification") or 0
            if not isinstance(count, int) or count < 0:
                raise BadTensor(f"output {wanted.name!r}: classification must be a count")
            outputs.append(Wanted(wanted.name, None, count))
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id or None,
        inputs=inputs,
        outputs=outputs,
    )


class GrpcServer:
    """The worker's gRPC server: bound at start-up (a port that cannot be bound stops the worker), started
    on the worker's event loop, stopped as the drain ends."""

    def __init__(self, service: Optic, v2: V2App, host: str, port: int, max_message_bytes: int) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(service, v2), self.server)
        address = f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {address} (OPTIC_GRPC_PORT): {exc}") from exc
        if self.port == 0:
            raise RuntimeError(f"gRPC cannot listen on {address} (OPTIC_GRPC_PORT)")
        self.started = False

    async def start(self) -> None:
        await self.server.start()
        self.started = True
        log.info("gRPC (inference.GRPCInferenceService) on port %d", self.port)

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
