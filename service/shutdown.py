"""Graceful shutdown: on SIGTERM a worker stops taking work, finishes what it accepted, then exits.

uvicorn, on SIGTERM, closes its listening socket at once and waits for open connections; under
`bentoml serve` the socket is shared with the arbiter, so new connections then wait in its backlog until they
are reset, and `/readyz` keeps answering 200 until then. optic puts a drain in front of that: the first
SIGTERM marks the worker draining (`/readyz` and every new request get 503 `shutting_down`, with
`Connection: close`), and only once the requests already accepted are done, or the grace period
(`OPTIC_SHUTDOWN_GRACE_S`) is over, is the signal handed to uvicorn, which then closes and exits. A second
SIGTERM goes to uvicorn at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger("bentoml.optic")  # under BentoML's logger: its handlers, format and level


class Drain:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.before_exit: list[Callable[[], Awaitable[None]]] = []  # after the drain, before the hand-over (gRPC)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap the SIGTERM handler uvicorn installed (signal handlers live on the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = loop
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._hand_over(signum, frame)
            return
        self.draining = True
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        log.info("SIGTERM: draining %d request(s) in flight (grace %.0f s)", self.in_flight, self.grace_s)
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for stop in self.before_exit:
            try:
                await stop()
            except Exception:
                log.exception("stopping a server failed")
        if self.in_flight:
            log.warning("grace period over: %d request(s) still in flight are cut off", self.in_flight)
            self._hand_over(signal.SIGTERM, None)
            self._hand_over(signal.SIGINT, None)  # uvicorn's second signal: exit without waiting
        else:
            log.info("drained: every accepted request answered; stopping")
            self._hand_over(signal.SIGTERM, None)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            raise SystemExit(0)

    def track(self) -> _InFlight:
        return _InFlight(self)


class _InFlight:
    __slots__ = ("drain",)

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def __enter__(self) -> None:
        self.drain.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self.drain.in_flight -= 1
