"""Cross-request batching per model: images from concurrent requests run in one session.run.

A batch closes when it is full, or when nothing more is on its way: the pipeline announces images it
is still decoding (`expect`), so a lone request never waits, and a burst waits at most `max_wait_s`
for its stragglers. All models share one inference thread, so runs never compete for the cores.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.tasks.base import Outputs

# While live requests came in the last BACKGROUND_QUIET_S, an evaluation's pieces are cut to about
# BACKGROUND_SLICE_S of inference: the most a live image waits behind one.
BACKGROUND_QUIET_S = 0.25
BACKGROUND_SLICE_S = 0.001
log = logging.getLogger("bentoml.optic")  # under BentoML's logger: its handlers, format and level
# (batch, busy: more work is waiting) -> every output with its batch dimension
RunBatch = Callable[[np.ndarray, bool], dict[str, np.ndarray]]


@dataclass
class _Pending:
    array: np.ndarray  # one image's input, or (chunk) a request's whole [k, ...] batch
    future: asyncio.Future[Any]
    queued_at: float
    decoded: bool  # came from an encoded image: decoding others competes with the run for the cores
    chunk: bool = False
    background: bool = False  # a piece of an evaluation's batch

    @property
    def images(self) -> int:
        return len(self.array) if self.chunk else 1


@dataclass
class _Background:
    """An evaluation's batch: cut into pieces that run only when no live image waits."""

    batch: np.ndarray
    future: asyncio.Future[Any]
    offset: int = 0
    pieces: list[asyncio.Future[Any]] = field(default_factory=list)

    def settle(self, _: asyncio.Future[Any] | None = None) -> None:
        """Once every piece has run: the whole batch's outputs, or the first piece's error."""
        if self.offset < len(self.batch) or not all(p.done() for p in self.pieces) or self.future.done():
            return
        for piece in self.pieces:
            error = piece.exception() if not piece.cancelled() else asyncio.CancelledError()
            if error is not None:
                self.future.set_exception(error)
                return
        results = [p.result() for p in self.pieces]
        self.future.set_result({n: np.concatenate([r[n] for r in results]) for n in results[0]})


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        executor: Executor,
        on_batch: Callable[[int, float, float, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._expected = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0  # batches handed to the inference thread, not yet finished
        self._queued_images = 0  # submitted, not yet in a batch
        self._held: _Pending | None = None
        self._background: collections.deque[_Background] = collections.deque()
        self._last_live = -1e9  # when a live request last came (perf_counter)
        self._background_image_s = 0.0  # the running mean of a background image's run time

    def note_live(self) -> None:
        """A live request is here: evaluation pieces shrink to BACKGROUND_SLICE_S for a while."""
        self._last_live = time.perf_counter()

    def idle(self) -> bool:
        """Nothing queued, on its way or running: a new image has no company to wait for."""
        return not self._in_flight and self._expected <= 0 and self._queue.empty() and self._held is None

    def expect(self, count: int) -> None:
        """Announce images being decoded now that will be submitted soon (negative to withdraw)."""
        self._expected = max(0, self._expected + count)
        self._arrived.set()

    async def submit(self, array: np.ndarray, *, decoded: bool = True) -> Outputs:
        """Queue one image's model input and wait for its outputs. `decoded=False`: a tensor sent as it is (the
        v2 protocol), whose batch, with no decoding beside it, may use every ORT thread."""
        self._expected = max(0, self._expected - 1)
        return await self._enqueue(array, decoded, chunk=False)

    async def submit_chunk(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Queue a request's whole batch of tensors (the v2 protocol) as one item: it joins a batch with other
        requests' images, never split, and gets back its own rows of every output."""
        return await self._enqueue(batch, False, chunk=True)

    async def submit_background(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """An evaluation's batch, at the lowest priority: it runs in pieces, each only when no live image is
        waiting or being decoded, and while live traffic is about, pieces short enough (BACKGROUND_SLICE_S)
        that a live image arriving waits little behind one. Its rows of every output, once all have run."""
        loop = asyncio.get_running_loop()
        self._start(loop)
        entry = _Background(batch, loop.create_future())
        self._background.append(entry)
        self._arrived.set()
        return await entry.future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())

    def _background_piece(self) -> _Pending:
        entry = self._background[0]
        now = time.perf_counter()
        size = self.max_batch_size
        if now - self._last_live < BACKGROUND_QUIET_S and self._background_image_s > 0:
            size = max(1, int(BACKGROUND_SLICE_S / self._background_image_s))
        size = min(size, self.max_batch_size, len(entry.batch) - entry.offset)
        piece = _Pending(entry.batch[entry.offset : entry.offset + size], asyncio.get_running_loop().create_future(),
                         now, decoded=True, chunk=True, background=True)  # fmt: skip
        entry.offset += size
        entry.pieces.append(piece.future)
        piece.future.add_done_callback(entry.settle)
        if entry.offset >= len(entry.batch):
            self._background.popleft()
        return piece

    async def _enqueue(self, array: np.ndarray, decoded: bool, *, chunk: bool) -> Any:
        loop = asyncio.get_running_loop()
        self._start(loop)
        pending = _Pending(array, loop.create_future(), time.perf_counter(), decoded, chunk)
        self._queue.put_nowait(pending)
        self._queued_images += pending.images
        self._arrived.set()
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        """Live images first; an evaluation's piece only when none waits or is being decoded."""
        while self._held is None and self._queue.empty():
            if self._background and self._expected <= 0:
                return [self._background_piece()]
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._held] if self._held is not None else [self._queue.get_nowait()]
        self._held = None
        images = batch[0].images
        self._queued_images -= images
        deadline = time.monotonic() + self.max_wait_s
        while images < self.max_batch_size:
            if not self._queue.empty():
                pending = self._queue.get_nowait()
                if images + pending.images > self.max_batch_size:
                    self._held = pending  # a chunk that would overflow the batch starts the next one
                    break
                batch.append(pending)
                images += pending.images
                self._queued_images -= pending.images
                continue
            remaining = deadline - time.monotonic()
            if self._expected <= 0 or remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        """Form a batch, hand it to the inference thread, and form the next while it runs: one batch waits
        behind the running one, so the thread goes from run to run without waiting for the event loop."""
        loop = asyncio.get_running_loop()
        runs: collections.deque[asyncio.Future[Any]] = collections.deque()
        while True:
            batch = await self._collect()
            backlogged = not self._queue.empty() or self._expected > 0 or self._held is not None or bool(runs)
            images = sum(p.images for p in batch)
            if len(batch) == 1 and batch[0].chunk:
                stacked = batch[0].array  # a request's batch alone: as sent, no copy
            elif not any(p.chunk for p in batch):
                stacked = np.stack([p.array for p in batch])
            else:
                stacked = np.concatenate([p.array if p.chunk else p.array[None] for p in batch])
            # The one-thread session leaves the other cores to decoding; tensors alone need none.
            # Evaluation's pieces always take it: they never leave spinning threads behind them either.
            busy = ((backlogged or images > 1) and any(p.decoded for p in batch)) or batch[0].background
            self._in_flight += 1
            run = loop.run_in_executor(self._executor, self._timed, stacked, busy)
            run.add_done_callback(functools.partial(self._finish, batch, images))
            runs.append(run)
            await self._until_next(runs)

    async def _until_next(self, runs: collections.deque[asyncio.Future[Any]]) -> None:
        """Until the next batch may be formed: when no run is left, or when a full batch is already waiting
        (then it goes behind the running one). A part-full batch waits for the run to end, gathering what
        arrives meanwhile, as batching on a GPU needs."""
        while runs:
            if runs[0].done():
                runs.popleft()
                continue
            if len(runs) == 1 and self._queued_images >= self.max_batch_size:
                return
            self._arrived.clear()
            arrival = asyncio.ensure_future(self._arrived.wait())
            await asyncio.wait([runs[0], arrival], return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()

    def _timed(self, stacked: np.ndarray, busy: bool) -> tuple[dict[str, np.ndarray], float, float]:
        started = time.perf_counter()
        outputs = self._run_batch(stacked, busy)
        return outputs, started, time.perf_counter()

    def _finish(self, batch: list[_Pending], images: int, run: asyncio.Future[Any]) -> None:
        """On the event loop, as a run ends: every request its rows, or its run's error."""
        self._in_flight -= 1
        error = run.exception() if not run.cancelled() else asyncio.CancelledError()
        if error is None:
            outputs, started, ended = run.result()
            if any(len(a) != images for a in outputs.values()):
                error = RuntimeError(f"a batch of {images} gave outputs of other lengths")
            elif batch[0].background:
                per_image = (ended - started) / images
                mean = self._background_image_s
                self._background_image_s = per_image if not mean else 0.8 * mean + 0.2 * per_image
        if error is not None:  # a failed run fails its own requests, never the loop
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        row = 0
        for pending in batch:
            if pending.chunk:
                end = row + len(pending.array)
                result: Any = {n: a[row:end] for n, a in outputs.items()}
                row = end
            else:
                result = {n: a[row] for n, a in outputs.items()}
                row += 1
            if not pending.future.done():
                pending.future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(images, min(p.queued_at for p in batch), started, ended)
            except Exception:  # bookkeeping never stops the loop that every request waits on
                log.exception("batch bookkeeping failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
