"""The ASGI middleware in front of every route, optic's and BentoML's: API keys, drain, /docs.json, errors.

- API keys (when set): every request needs one, except `GET|HEAD /livez` and `/readyz` (and `/metrics`
  unless OPTIC_PROTECT_METRICS). The exemption matches the exact, already-normalized path, so `//classify`,
  `/%63lassify`, `/classify/`, HEAD and OPTIONS all need a key as much as `POST /classify` does.
- Drain (after SIGTERM): `/readyz` and every new request get 503 `shutting_down`; requests already inside
  are counted, so the drain knows when they are done.
- `/docs.json`: BentoML's document with optic's routes added (service.http.openapi).
- BentoML's own errors (404, 405, 500) get optic's shape, `{"error", "reason"}`, and are counted.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from service.auth import KeyChecker, presented_key
from service.errors import OpticError, ShuttingDown, Unauthorized
from service.http.app import REASON_HEADER, Answer, Receive, Scope, Send, error_answer, send_answer
from service.shutdown import Drain
from service.v2.rest import error_label, is_v2

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
EXEMPT = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})  # probes: no key
LIVE = frozenset({"/livez", "/healthz", "/metrics", "/v2/health/live"})  # answered as usual while draining
BENTOML_PATHS = frozenset({"/", "/docs.json", "/schema.json", "/metrics", *PROBES})
_STATUS_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 503: "unavailable"}


def normalize_path(path: str) -> str:
    """The one canonical form of a request path: percent-decoded, dot segments resolved, slashes collapsed."""
    decoded = unquote(path)
    normalized = posixpath.normpath("/" + decoded.lstrip("/")) if decoded else "/"
    return "/" if normalized in (".", "//") else normalized.replace("//", "/")


class GuardState:
    """What the guard consults, filled in by the service once its settings and models are loaded."""

    def __init__(self) -> None:
        self.keys = KeyChecker([])
        self.protect_metrics = False
        self.drain = Drain(grace_s=30.0)
        self.optic_paths: frozenset[str] = frozenset()
        # optic's routes, called directly (no framework layers between): the endpoint and path parameters
        self.match: Callable[[str], tuple[Any, dict[str, str]] | None] = lambda path: None
        self.v2: Any = None  # the KServe v2 REST app: every path under /v2
        self.count_error: Callable[[str, str], None] = lambda endpoint, reason: None
        self.count_key: Callable[[str], None] = lambda key_id: None
        self.docs: Callable[[], dict[str, Any]] | None = None
        self._docs_body: bytes | None = None

    def docs_body(self) -> bytes | None:
        if self._docs_body is None and self.docs is not None:
            self._docs_body = json.dumps(self.docs()).encode()
        return self._docs_body

    def endpoint_label(self, path: str) -> str:
        """A bounded label: a known route's path, else "other" (never what a client made up)."""
        if is_v2(path):
            return error_label(path)
        if path in self.optic_paths or path in BENTOML_PATHS:
            return path
        found = self.match(path)
        return found[0].path if found is not None else "other"


def _exempt(state: GuardState, path: str, method: str) -> bool:
    if method not in ("GET", "HEAD") or normalize_path(path) != path:
        return False
    return path in EXEMPT or (path == "/metrics" and not state.protect_metrics)


class Guard:
    def __init__(self, app: Any, *, state: GuardState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if state.keys.enabled and not _exempt(state, path, method):
                self._authenticate(scope)
            if state.drain.draining and path not in LIVE:
                raise ShuttingDown("optic is shutting down: send this request to another replica")
        except OpticError as exc:
            state.count_error(state.endpoint_label(path), exc.reason)
            await send_answer(send, error_answer(exc))
            return
        if path == "/docs.json" and method in ("GET", "HEAD"):
            body = state.docs_body()
            if body is not None:
                await send_answer(send, Answer(body))
                return
        if path in PROBES or path == "/metrics":
            await self.app(scope, receive, send)
            return
        with state.drain.track():
            found = state.match(path)
            endpoint = None
            if found is not None:
                endpoint, params = found
                if params:
                    scope = {**scope, "path_params": params}
            elif is_v2(path):
                endpoint = state.v2
            if endpoint is not None:
                await endpoint(scope, receive, send)  # optic's endpoints shape and count their own errors
            else:
                await self.app(scope, receive, self._shaping_send(send, state.endpoint_label(path)))

    def _authenticate(self, scope: Scope) -> None:
        key = presented_key(scope["headers"])
        key_id = self.state.keys.identify(key) if key is not None else None
        if key_id is None:
            raise Unauthorized(
                "a valid API key is needed: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
                if key is None
                else "the API key sent is not valid",
                headers={"www-authenticate": 'Bearer realm="optic"'},
            )
        self.state.count_key(key_id)

    def _shaping_send(self, send: Send, endpoint: str) -> Send:
        """BentoML's and Starlette's error answers (plain text 404 and the like), as optic's JSON."""
        held: dict[str, Any] | None = None
        chunks: list[bytes] = []
        state = self.state

        async def shaping_send(message: dict[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                status = message["status"]
                headers = dict(message.get("headers") or [])
                reason = headers.get(REASON_HEADER, b"").decode() or _STATUS_REASONS.get(
                    status, "internal_error" if status >= 500 else "invalid_request"
                )
                state.count_error(endpoint, reason)
                held = {**message, "reason": reason}
                return
            if held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body = _with_reason(held, b"".join(chunks))
                held = None
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return shaping_send


def _with_reason(start: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    reason = start.pop("reason")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {"error": body.decode(errors="replace").strip() or "invalid request"}
    if not isinstance(payload, dict):
        payload = {"error": str(payload)}
    payload.setdefault("error", payload.get("detail") or "invalid request")
    if not isinstance(payload["error"], str):
        payload["error"] = json.dumps(payload["error"])
    payload.setdefault("reason", reason)
    body = json.dumps(payload).encode()
    headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() not in (b"content-length", b"content-type")]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REASON_HEADER, reason.encode()),
    ]
    return {**start, "headers": headers}, body
