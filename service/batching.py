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
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.tasks.base import Outputs

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

    @property
    def images(self) -> int:
        return len(self.array) if self.chunk else 1


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

    async def _enqueue(self, array: np.ndarray, decoded: bool, *, chunk: bool) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())
        pending = _Pending(array, loop.create_future(), time.perf_counter(), decoded, chunk)
        self._queue.put_nowait(pending)
        self._queued_images += pending.images
        self._arrived.set()
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        batch = [self._held] if self._held is not None else [await self._queue.get()]
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
            busy = (backlogged or images > 1) and any(p.decoded for p in batch)
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
