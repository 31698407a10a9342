"""ASGI middleware: the request body limit, and counting every refused request by reason.

The limit is enforced twice: on the declared Content-Length before anything is read, and on the bytes
actually received (chunked bodies declare nothing). Whatever the app answered to a body cut off at the
limit is replaced by the 413.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

REASON_HEADER = b"x-optic-error-reason"
_STATUS_REASONS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}
Scope = dict[str, Any]
Message = dict[str, Any]


class _BodyTooLarge(Exception):
    pass


class OpticMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: Callable[[str], int],
        count_error: Callable[[str, str], None],
        endpoints: frozenset[str],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.count_error = count_error
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.max_body_bytes(path)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, path, limit)
            return

        received = 0
        over_limit = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over_limit = True
                    raise _BodyTooLarge
            return message

        held: Message | None = None  # a framework error's start, held until its body has its reason added
        chunks: list[bytes] = []

        async def counting_send(message: Message) -> None:
            nonlocal started, held
            if over_limit:
                return  # the 413 below replaces whatever the app makes of the cut-off body
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if status >= 400:
                    headers = dict(message.get("headers") or [])
                    ours = headers.get(REASON_HEADER, b"").decode()
                    reason = ours or _STATUS_REASONS.get(
                        status, "internal_error" if status >= 500 else "invalid_request"
                    )
                    self.count_error(path, reason)
                    if not ours and status < 500:  # BentoML's own validation error: give it our shape
                        held = {**message, "reason": reason}
                        return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body = _with_reason(held, b"".join(chunks))
                held = None
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, counting_send)
        if over_limit and not started:
            await self._refuse(send, path, limit)

    async def _refuse(self, send: Callable[[Message], Any], path: str, limit: int) -> None:
        self.count_error(path, "body_too_large")
        body = json.dumps(
            {
                "error": f"request body exceeds the limit of {limit} bytes (OPTIC_MAX_BODY_BYTES)",
                "reason": "body_too_large",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (REASON_HEADER, b"body_too_large"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _with_reason(start: Message, body: bytes) -> tuple[Message, bytes]:
    """A JSON error body from the framework, with `reason` added (as optic's own errors carry it)."""
    reason = start.pop("reason")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {"error": body.decode(errors="replace").strip() or "invalid request"}
    if isinstance(payload, dict):
        payload.setdefault("error", payload.get("detail") or "invalid request")
        payload.setdefault("reason", reason)
    body = json.dumps(payload).encode()
    headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() not in (b"content-length", b"content-type")]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REASON_HEADER, reason.encode()),
    ]
    return {**start, "headers": headers}, body
