"""Cross-request batching per model: images from concurrent requests run in one session.run.

A batch closes when it is full, or when nothing more is on its way: the pipeline announces images it
is still decoding (`expect`), so a lone request never waits, and a burst waits at most `max_wait_s`
for its stragglers. All models share one inference thread, so runs never compete for the cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.tasks.base import Outputs

log = logging.getLogger("bentoml.optic")  # under BentoML's logger: its handlers, format and level
RunBatch = Callable[[np.ndarray, bool], list[Outputs]]  # (batch, busy: more work is waiting)


@dataclass
class _Pending:
    array: np.ndarray
    future: asyncio.Future[Outputs]
    queued_at: float
    decoded: bool  # came from an encoded image: decoding others competes with the run for the cores


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
        self._running = False

    def idle(self) -> bool:
        """Nothing queued, on its way or running: a new image has no company to wait for."""
        return not self._running and self._expected <= 0 and self._queue.empty()

    def expect(self, count: int) -> None:
        """Announce images being decoded now that will be submitted soon (negative to withdraw)."""
        self._expected = max(0, self._expected + count)
        self._arrived.set()

    async def submit(self, array: np.ndarray, *, decoded: bool = True) -> Outputs:
        """Queue one image's model input and wait for its outputs. `decoded=False`: a tensor sent as it is (the
        v2 protocol), whose batch, with no decoding beside it, may use every ORT thread."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._expected = max(0, self._expected - 1)
        self._queue.put_nowait(_Pending(array, future, time.perf_counter(), decoded))
        self._arrived.set()
        return await future

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
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
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            backlogged = not self._queue.empty() or self._expected > 0  # more was waiting as this batch started
            started = time.perf_counter()
            self._running = True
            try:
                stacked = np.stack([p.array for p in batch])
                # The one-thread session leaves the other cores to decoding; tensors alone need none.
                busy = (backlogged or len(batch) > 1) and any(p.decoded for p in batch)
                outputs = await loop.run_in_executor(self._executor, self._run_batch, stacked, busy)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} gave {len(outputs)} outputs")
            except Exception as exc:  # a failed run fails its own requests, never the loop
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            finally:
                self._running = False
            ended = time.perf_counter()
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)
            if self._on_batch is not None:
                try:
                    self._on_batch(len(batch), min(p.queued_at for p in batch), started, ended)
                except Exception:  # bookkeeping never stops the loop that every request waits on
                    log.exception("batch bookkeeping failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
