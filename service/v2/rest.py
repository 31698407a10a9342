"""The Open Inference Protocol over HTTP (KServe v2 REST, with Triton's binary tensor extension).

`GET /v2`, `/v2/health/live|ready`, `/v2/models/M[/versions/V]` (metadata), `.../ready`, `.../config`
(Triton's model configuration), `POST .../infer`, `POST /v2/repository/index` (every version's state). A
request body is JSON, or (Triton's binary extension) a
JSON header of `Inference-Header-Content-Length` bytes followed by the inputs that carry
`parameters.binary_data_size`, in order. Outputs go back as JSON `data`, or as binary after the JSON header
where the request asks (`binary_data` per output, `binary_data_output` for all). Errors are Triton's shape,
`{"error": "..."}` (with optic's `reason` beside it), 400 for a bad request, 404 for an unknown model, 503 when
overloaded or not ready.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import TYPE_CHECKING, Any

from service.errors import (
    BodyTooLarge,
    ControlOff,
    LoadFailed,
    MethodNotAllowed,
    NotFound,
    OpticError,
    ShuttingDown,
    UnknownModel,
)
from service.http.app import Answer, ClientGone, Receive, Scope, Send, json_answer, read_body, send_answer
from service.repository import _version_key
from service.v2.tensors import (
    BadTensor,
    InferRequest,
    InferResult,
    Tensor,
    Wanted,
    check_shape,
    from_json,
    from_raw,
    to_json_data,
    to_raw,
)
from service.v2.views import IMAGE_SUFFIX, Views, infer

if TYPE_CHECKING:
    from service.service import Optic

log = logging.getLogger("bentoml.optic")

HEADER_LENGTH = b"inference-header-content-length"
INFER_LABEL = "/v2/models/infer"  # the errors metric's endpoint label: bounded, whatever the model
META_LABEL = "/v2"
# What a v2 client should see for optic's statuses: Triton answers 400 to every bad request.
_V2_STATUS = {422: 400, 415: 400}


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_label(path: str) -> str:
    """The errors metric's endpoint label of a /v2 path: bounded, whatever the model."""
    return INFER_LABEL if path.rstrip("/").endswith("/infer") else META_LABEL


def v2_error(exc: OpticError) -> Answer:
    status = _V2_STATUS.get(exc.status_code, exc.status_code)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    if status in (413, 503):
        headers.append((b"connection", b"close"))
    return json_answer({"error": exc.message, "reason": exc.reason}, status, headers)


class V2App:
    """The /v2 routes; the guard hands it every path under /v2 (API keys and drain already checked)."""

    def __init__(self) -> None:
        self.service: Optic | None = None
        self.views: Views | None = None

    def bind(self, service: Optic) -> None:
        self.service = service
        self.views = Views(service.repository)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = [p for p in scope["path"].split("/") if p]
        label = error_label(scope["path"])
        try:
            answer = await self._route(scope, receive, parts)
        except OpticError as exc:
            self._count(label, exc.reason)
            answer = v2_error(exc)
        except ClientGone:
            return
        except Exception:
            log.exception("%s failed", scope["path"])
            self._count(label, "internal_error")
            answer = Answer(b'{"error":"internal error (see the server log)","reason":"internal_error"}', 500)
        await send_answer(send, answer)

    def _count(self, label: str, reason: str) -> None:
        if self.service is not None:
            self.service.metrics.errors.labels(label, reason).inc()

    async def _route(self, scope: Scope, receive: Receive, parts: list[str]) -> Answer:
        service, views = self.service, self.views
        method = scope["method"]
        if parts[:2] == ["v2", "health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
            _only(method, "GET", "HEAD")
            if parts[2] == "ready" and (service is None or not await service.__is_ready__()):
                raise ShuttingDown("optic is not ready", reason="unavailable")
            return Answer(b"", content_type=b"text/plain")
        if service is None or views is None:
            raise ShuttingDown("optic is not ready: its models are still loading", reason="unavailable")
        if parts == ["v2"]:
            _only(method, "GET", "HEAD")
            return json_answer(server_metadata(service))
        if parts == ["v2", "repository", "index"]:
            _only(method, "POST")
            body = await read_body(receive, service.settings.max_field_bytes, lambda: _too_large(0))
            return json_answer(views.index(ready_only=_index_ready_only(body)))
        if parts[:3] == ["v2", "repository", "models"] and len(parts) == 5 and parts[4] in ("load", "unload"):
            _only(method, "POST")
            await read_body(receive, service.settings.max_field_bytes, lambda: _too_large(0))
            return json_answer(await load_or_unload(service, parts[3], unload=parts[4] == "unload"))
        if len(parts) < 3 or parts[1] != "models":
            raise NotFound(f"no v2 route {scope['path']!r}")
        name, rest = parts[2], parts[3:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise NotFound(f"no v2 route {scope['path']!r}")
            version, rest = rest[1], rest[2:]
        view = views.get(name)
        model = view.resolve(version)
        if not rest:
            _only(method, "GET", "HEAD")
            return json_answer(view.metadata(model))
        if rest == ["ready"]:
            _only(method, "GET", "HEAD")
            return Answer(b"", content_type=b"text/plain")
        if rest == ["config"]:
            _only(method, "GET", "HEAD")
            return json_answer(view.config(model, service.settings))
        if rest == ["infer"]:
            _only(method, "POST")
            limit = service.settings.max_body_bytes
            body = _decompress(scope, await read_body(receive, limit, lambda: _too_large(limit)), limit)
            request = parse_request(scope, body, name, version or "")
            result = await infer(service, views, request, "v2-http")
            return encode_result(result, request)
        raise NotFound(f"no v2 route {scope['path']!r}")


def _only(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"this route takes {', '.join(allowed)}, not {method}", headers={"allow": allowed[0]})


async def load_or_unload(service: Optic, name: str, *, unload: bool) -> dict[str, Any]:
    """Triton's repository extension: load (the versions the policy keeps) or unload (every version) a model, on
    every worker: applied here before the answer, on the others within half a second."""
    from service.lifecycle import control

    lifecycle = getattr(service, "lifecycle", None)
    if lifecycle is None or not service.settings.model_control:
        raise ControlOff("model load and unload calls are off: start optic with OPTIC_MODEL_CONTROL=true")
    base = name.removesuffix(IMAGE_SUFFIX) if name.endswith(IMAGE_SUFFIX) else name
    folder = service.settings.model_repository / base
    served = any(m.metadata.name == base for m in service.repository)
    if not folder.is_dir() and not served:
        raise UnknownModel(f"unknown model {name!r}: no folder {base}/ in the model repository")
    await control(lifecycle, base, unload=unload)
    versions = sorted((m.metadata.version for m in service.repository if m.metadata.name == base), key=_version_key)
    if not unload and not versions:
        reasons = {k: v for k, v in service.repository.failures.items() if k.split("/")[0] == base}
        raise LoadFailed(f"no version of {base!r} could be loaded", detail={"failed": reasons})
    return {"model": base, "state": "UNAVAILABLE" if unload else "READY", "versions": versions}


def _index_ready_only(body: bytes) -> bool:
    """The index request's optional `{"ready": true}` (tritonclient sends an empty body)."""
    if not body.strip():
        return False
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise BadTensor(f"the repository index request is not JSON: {exc}", reason="malformed_request") from exc
    return bool(isinstance(request, dict) and request.get("ready", False))


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body exceeds the limit of {limit} bytes (OPTIC_MAX_BODY_BYTES)")


def _decompress(scope: Scope, body: bytes, limit: int) -> bytes:
    """tritonclient's request_compression_algorithm: a gzip or deflate body, inflated within the body limit."""
    encoding = next((v for k, v in scope["headers"] if k == b"content-encoding"), b"identity").strip().lower()
    if encoding == b"identity":
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise BadTensor(f"Content-Encoding {encoding.decode('latin-1')!r}: send gzip, deflate or none",
                        reason="unsupported_media_type")  # fmt: skip
    inflater = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadTensor(f"the {encoding.decode()} body cannot be inflated: {exc}", reason="malformed_request") from exc
    if len(inflated) > limit:
        raise _too_large(limit)
    return inflated


def server_metadata(service: Optic) -> dict[str, Any]:
    from service.service import optic_version

    return {"name": "optic", "version": optic_version(), "extensions": EXTENSIONS}


EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]


def parse_request(scope: Scope, body: bytes, model: str, version: str) -> InferRequest:
    header_length = None
    for key, value in scope["headers"]:
        if key == HEADER_LENGTH:
            if not value.isdigit() or int(value) > len(body):
                raise BadTensor(f"Inference-Header-Content-Length {value.decode('latin-1')!r} is not a length "
                                f"within the {len(body)}-byte body", reason="malformed_request")  # fmt: skip
            header_length = int(value)
    view = memoryview(body)
    header_bytes = view[:header_length] if header_length is not None else view
    try:
        header = json.loads(bytes(header_bytes))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadTensor(f"the request header is not JSON: {exc}", reason="malformed_request") from exc
    if not isinstance(header, dict):
        raise BadTensor("the request must be a JSON object with 'inputs'", reason="malformed_request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadTensor("the request has no 'inputs' list")
    offset = header_length if header_length is not None else len(body)
    inputs = []
    for entry in raw_inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadTensor("each input is an object with 'name', 'datatype', 'shape' and 'data'")
        name, datatype = entry["name"], entry.get("datatype")
        if not isinstance(datatype, str):
            raise BadTensor(f"input {name!r} has no datatype")
        shape = check_shape(name, entry.get("shape"))
        parameters = entry.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body) or header_length is None:
                raise BadTensor(f"input {name!r}: binary_data_size {size!r} runs past the body (or no "
                                "Inference-Header-Content-Length)", reason="invalid_byte_size")  # fmt: skip
            data = from_raw(name, datatype, shape, view[offset : offset + size])
            offset += size
        elif "data" in entry:
            data = from_json(name, datatype, shape, entry["data"])
        else:
            raise BadTensor(f"input {name!r} has neither data nor binary_data_size")
        inputs.append(Tensor(name, datatype, shape, data))
    if offset != len(body):
        raise BadTensor(f"{len(body) - offset} bytes after the last binary input", reason="invalid_byte_size")
    wanted = None
    if isinstance(header.get("outputs"), list):
        wanted = []
        for entry in header["outputs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise BadTensor("each requested output is an object with a 'name'")
            parameters = entry.get("parameters") or {}
            binary = parameters.get("binary_data")
            count = parameters.get("classification", 0)
            if not isinstance(count, int) or count < 0:
                raise BadTensor(f"output {entry['name']!r}: classification must be a count")
            wanted.append(Wanted(entry["name"], binary if isinstance(binary, bool) else None, count))
    parameters = header.get("parameters") or {}
    request_id = header.get("id")
    return InferRequest(
        model=model,
        version=version,
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=wanted,
        binary_output=bool(isinstance(parameters, dict) and parameters.get("binary_data_output", False)),
    )


def encode_result(result: InferResult, request: InferRequest) -> Answer:
    binary_of = {w.name: w.binary for w in request.outputs or []}
    outputs = []
    blobs = []
    for tensor in result.outputs:
        binary = binary_of.get(tensor.name)
        if binary is None:
            binary = request.binary_output
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            raw = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_json_data(tensor)
        outputs.append(entry)
    content: dict[str, Any] = {"model_name": result.model, "model_version": result.version, "outputs": outputs}
    if result.id is not None:
        content["id"] = result.id
    header = json.dumps(content, separators=(",", ":")).encode()
    if not blobs:
        return Answer(header)
    return Answer(
        b"".join([header, *blobs]),
        content_type=b"application/octet-stream",
        headers=[(HEADER_LENGTH, str(len(header)).encode())],
    )
