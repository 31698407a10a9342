"""optic's own ASGI endpoints: the body read straight from the connection, one answer sent as bytes.

BentoML keeps the process (workers, probes, /metrics, OpenAPI UI); these endpoints, mounted into its app,
skip its IO layer: no temporary file per upload, no pydantic pass per request, nothing blocking on the event
loop. Each `Route` names its form fields once (`service.http.forms`): they drive parsing, checking and the
OpenAPI document alike. Every refusal is a JSON `{"error", "reason"}` counted in `optic_errors_total`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from service.errors import BodyTooLarge, MethodNotAllowed, OpticError, ShuttingDown
from service.http.forms import FileField, Form, TextField
from service.http.multipart import FormLimits, FormReader, Part

if TYPE_CHECKING:
    from service.service import Optic

log = logging.getLogger("bentoml.optic")  # under BentoML's logger: its handlers, format and level

REASON_HEADER = b"x-optic-error-reason"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Answer:
    body: bytes
    status: int = 200
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_answer(content: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    return Answer(body, status, headers=headers or [])


def error_answer(exc: OpticError) -> Answer:
    headers = [(REASON_HEADER, exc.reason.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    if exc.status_code in (413, 503) or exc.reason == "malformed_request":
        headers.append((b"connection", b"close"))  # the rest of the body may still be on its way
    return json_answer(exc.to_json(), exc.status_code, headers)


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", answer.content_type), (b"content-length", str(len(answer.body)).encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers + answer.headers})
    await send({"type": "http.response.body", "body": answer.body})


class ClientGone(Exception):
    """The client disconnected before its request was read: there is nobody to answer."""


Handler = Callable[["Optic", Form], Awaitable[Answer]]


@dataclass(frozen=True)
class Call:
    """What a route without a form is called with: its path parameters and query."""

    scope: Scope
    params: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    summary: str
    description: str
    handler: Handler | Callable[[Optic, Call], Awaitable[Answer]]
    files: tuple[FileField, ...] = ()
    texts: tuple[TextField, ...] = ()
    responses: dict[str, Any] = field(default_factory=dict)
    spool: frozenset[str] = frozenset()  # file fields written to disk as they arrive (archives)
    large_body: bool = False  # the body limit is the archive limit

    @property
    def takes_form(self) -> bool:
        return bool(self.files or self.texts)


class Endpoint:
    """The ASGI app of one path: its routes by method."""

    def __init__(self, app: OpticApp, routes: list[Route]) -> None:
        self.app = app
        self.methods = {r.method: r for r in routes}
        self.path = routes[0].path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        workdir: Path | None = None
        service = self.app.service
        route = self.methods.get(scope["method"]) or next(iter(self.methods.values()))
        try:
            if scope["method"] not in self.methods:
                allowed = ", ".join(sorted(self.methods))
                raise MethodNotAllowed(
                    f"{self.path} takes {' or '.join(sorted(self.methods))}, not {scope['method']}",
                    headers={"allow": allowed},
                )
            if service is None:
                raise ShuttingDown("optic is not ready: its models are still loading", reason="unavailable")
            if route.takes_form:
                if route.spool:
                    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, None, "optic-upload-"))
                form = await self._read_form(route, service, scope, receive, workdir)
                answer = await route.handler(service, form)  # type: ignore[arg-type]
            else:
                answer = await route.handler(service, Call(scope, scope.get("path_params") or {}))  # type: ignore[arg-type]
        except OpticError as exc:
            self.app.count_error(route.path, exc.reason)
            answer = error_answer(exc)
        except ClientGone:
            return
        except Exception:
            log.exception("%s failed", route.path)
            self.app.count_error(route.path, "internal_error")
            answer = json_answer({"error": "internal error (see the server log)", "reason": "internal_error"}, 500)
        finally:
            if workdir is not None:
                await asyncio.to_thread(shutil.rmtree, workdir, True)
        await send_answer(send, answer)

    async def _read_form(
        self, route: Route, service: Optic, scope: Scope, receive: Receive, workdir: Path | None
    ) -> Form:
        settings = service.settings
        limit = (
            max(settings.max_body_bytes, settings.max_archive_bytes) if route.large_body else (settings.max_body_bytes)
        )
        too_large = functools.partial(self._too_large, route, limit)
        content_type = b""
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = value
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large()
        limits = FormLimits(settings.max_form_parts, settings.max_field_bytes, settings.max_filename_length)
        reader = FormReader(content_type.decode("latin-1"), limits, spool=route.spool.__contains__)
        files: dict[int, IO[bytes]] = {}
        try:
            if workdir is None:  # not spooled: the body is bounded, so it is parsed whole (the reader's fast path)
                reader.feed(await read_body(receive, limit, too_large), final=True)
            else:
                async for chunk, more in body_chunks(receive, limit, too_large):
                    reader.feed(chunk, final=not more)
                    await self._spool(service, reader, workdir, files)
            parts = reader.finish()
        finally:
            for handle in files.values():
                await asyncio.to_thread(handle.close)
        return Form(parts, route.files, route.texts)

    @staticmethod
    async def _spool(service: Optic, reader: FormReader, workdir: Path, files: dict[int, IO[bytes]]) -> None:
        for part, data in reader.take_spooled():
            handle = files.get(id(part))
            if handle is None:
                part.path = workdir / f"upload-{len(files)}"
                handle = files[id(part)] = await asyncio.to_thread(part.path.open, "wb")
            await asyncio.to_thread(handle.write, data)

    @staticmethod
    def _too_large(route: Route, limit: int) -> BodyTooLarge:
        setting = "OPTIC_MAX_ARCHIVE_BYTES" if route.large_body else "OPTIC_MAX_BODY_BYTES"
        return BodyTooLarge(f"request body exceeds the limit of {limit} bytes ({setting})")


async def body_chunks(
    receive: Receive, limit: int, too_large: Callable[[], OpticError]
) -> AsyncIterator[tuple[bytes, bool]]:
    """The request body as it arrives, (chunk, more to come); refused once it passes `limit` bytes."""
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > limit:
            raise too_large()
        yield chunk, more


async def read_body(receive: Receive, limit: int, too_large: Callable[[], OpticError]) -> bytes:
    """The whole request body, at most `limit` bytes (one chunk, as most bodies come, is not copied)."""
    chunks = [chunk async for chunk, _ in body_chunks(receive, limit, too_large)]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class OpticApp:
    """Holds the routes and, once the service has loaded its models, the service they call."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self.paths = frozenset(r.path for r in routes)  # templates: /evaluations/{id}
        by_path: dict[str, list[Route]] = {}
        for route in routes:
            by_path.setdefault(route.path, []).append(route)
        self.endpoints = {path: Endpoint(self, rs) for path, rs in by_path.items() if "{" not in path}
        self.templated = [
            (re.compile("^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$"), Endpoint(self, rs))
            for path, rs in by_path.items()
            if "{" in path
        ]
        self.service: Optic | None = None
        self._count: Callable[[str, str], None] | None = None

    def bind(self, service: Optic, count_error: Callable[[str, str], None]) -> None:
        self.service = service
        self._count = count_error

    def match(self, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """The endpoint for a request path, with its path parameters."""
        endpoint = self.endpoints.get(path)
        if endpoint is not None:
            return endpoint, {}
        for pattern, templated in self.templated:
            found = pattern.match(path)
            if found is not None:
                return templated, found.groupdict()
        return None

    def count_error(self, path: str, reason: str) -> None:
        if self._count is not None:
            self._count(path, reason)

    def starlette(self) -> Any:
        """A Starlette app of the routes, which BentoML mounts (it matches a mount by its routes)."""
        from starlette.applications import Starlette
        from starlette.routing import Route as StarletteRoute

        every = [*self.endpoints.items(), *((e.path, e) for _, e in self.templated)]
        return Starlette(routes=[StarletteRoute(path, endpoint) for path, endpoint in every])


def upload_path(part: Part) -> Path:
    path = part.path
    assert path is not None, "not a spooled part"
    return path
