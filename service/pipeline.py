"""The one inference pipeline: decode + preprocess -> batched session.run -> postprocess, timed per stage."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.admission import Admission
from service.batching import MicroBatcher
from service.imaging import DecodedImage, Geometry, decode_image
from service.metrics import Metrics
from service.repository import LoadedModel, ModelRepository
from service.settings import Settings
from service.tasks.base import Outputs


@dataclass
class Prepared:
    decoded: DecodedImage
    array: np.ndarray
    geometry: Geometry


@dataclass
class Prediction:
    prepared: Prepared
    outputs: Outputs
    result: dict[str, Any]


def prepare(model: LoadedModel, data: bytes | Path, filename: str, max_pixels: int) -> Prepared:
    spec = model.metadata.input
    if isinstance(data, Path):
        data = data.read_bytes()
    decoded = decode_image(data, filename=filename, max_pixels=max_pixels, draft_size=(spec.width, spec.height))
    array, geometry = model.task.preprocess(decoded, model.metadata)
    return Prepared(decoded, array, geometry)


@dataclass(frozen=True)
class _Series:
    """One model's labelled metric series, looked up once (a labels() call per observation adds up)."""

    preprocess: Any
    inference: Any
    postprocess: Any
    batch_size: Any
    images: Any


class Pipeline:
    def __init__(self, repository: ModelRepository, settings: Settings, metrics: Metrics) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        # One inference at a time for every model: ORT already uses the cores; two runs at once would not. The
        # batches run on the inference thread; a lone image may run on the thread that decoded it (see
        # _predict_alone), so the lock, not the thread, is what keeps runs apart.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="optic-infer")
        self._infer_lock = threading.Lock()
        self._prep_pool = ThreadPoolExecutor(2, thread_name_prefix="optic-prep")
        # Evaluation decodes and scores on a thread of its own, which paces itself while live requests come
        # (eval_pace). Not a lower OS priority: a thread descheduled while it holds the GIL stalls them all.
        self.eval_pool = ThreadPoolExecutor(1, thread_name_prefix="optic-eval")
        self._last_live = -1e9
        self._batchers: dict[str, MicroBatcher] = {}
        self._model_series: dict[str, _Series] = {}
        self._request_series: dict[tuple[str, str], Any] = {}
        self.admission = Admission(
            max_queue_images=settings.max_queue_images, latency_budget_s=settings.latency_budget_ms / 1000
        )

    def batcher(self, model: LoadedModel) -> MicroBatcher:
        if model.key not in self._batchers:
            series = self._series(model)
            key = model.key
            admission = self.admission

            def on_batch(size: int, queued: float, started: float, ended: float) -> None:
                series.batch_size.observe(size)
                series.inference.observe(ended - started)
                admission.observe_batch(key, size, queued, ended)

            lock = self._infer_lock

            def run(batch: np.ndarray, busy: bool) -> dict[str, np.ndarray]:
                with lock:
                    return model.run_batched(batch, busy)

            self._batchers[model.key] = MicroBatcher(
                run,
                max_batch_size=min(self.settings.max_batch_size, model.max_batch_size or 1 << 30),
                max_wait_s=self.settings.max_batch_wait_ms / 1000,
                executor=self._infer_pool,
                on_batch=on_batch,
            )
        return self._batchers[model.key]

    async def _prepare_all(self, model: LoadedModel, files: Sequence[tuple[str, bytes | Path]]) -> list[Prepared]:
        loop = asyncio.get_running_loop()
        max_pixels = self.settings.max_image_pixels

        def work() -> list[Prepared]:
            return [prepare(model, data, name, max_pixels) for name, data in files]

        return await loop.run_in_executor(self._prep_pool, work)

    async def predict(
        self, model: LoadedModel, files: Sequence[tuple[str, bytes | Path]], params: Any, protocol: str = "http"
    ) -> list[Prediction]:
        """Every image of a request, in order; one bad image refuses the whole request before any runs.
        Refused with Overloaded, before any work, when its images could not finish within the budget.
        `params` None: the raw outputs only (the v2 protocol's encoded-image view), no task postprocessing."""
        self.admission.admit(model.key, len(files))
        self._requests(model, protocol).inc()
        self._live(model)
        try:
            return await self._predict(model, files, params)
        finally:
            self.admission.release(model.key, len(files))

    async def infer_tensors(self, model: LoadedModel, batch: np.ndarray, protocol: str) -> dict[str, np.ndarray]:
        """A batch of model inputs as sent (the v2 protocol's tensor view): admitted like images, run in the
        same batcher as every other request for the model (as one item, never split), its raw outputs back."""
        self.admission.admit(model.key, len(batch))
        self._requests(model, protocol).inc()
        self._live(model)
        try:
            outputs = await self.batcher(model).submit_chunk(batch)
            self._series(model).images.inc(len(batch))
            return outputs
        finally:
            self.admission.release(model.key, len(batch))

    def _requests(self, model: LoadedModel, protocol: str) -> Any:
        child = self._request_series.get((model.key, protocol))
        if child is None:
            meta = model.metadata
            child = self._request_series[model.key, protocol] = self.metrics.requests.labels(
                meta.name, meta.version, protocol
            )
        return child

    def _alone(
        self, model: LoadedModel, name: str, data: bytes | Path, params: Any
    ) -> Prepared | tuple[list[Prediction], tuple[float, float, float, float]]:
        """On a preprocessing thread: decode, and when no inference is running, run and postprocess the image
        right here, in one hop from the event loop (the latency of a lone request). Else the prepared image,
        for the batcher."""
        started = time.perf_counter()
        prepared = prepare(model, data, name, self.settings.max_image_pixels)
        decoded = time.perf_counter()
        if not self._infer_lock.acquire(blocking=False):
            self._series(model).preprocess.observe(decoded - started)
            return prepared
        try:
            outputs = model.run(prepared.array[None], False)
        finally:
            self._infer_lock.release()
        ran = time.perf_counter()
        result = {} if params is None else model.task.postprocess(outputs[0], prepared.geometry, model.metadata, params)
        return [Prediction(prepared, outputs[0], result)], (started, decoded, ran, time.perf_counter())

    def _record_alone(self, model: LoadedModel, times: tuple[float, float, float, float]) -> None:
        """The metrics of a request that ran alone, recorded once its answer has gone out."""
        started, decoded, ran, done = times
        series = self._series(model)
        series.preprocess.observe(decoded - started)
        series.inference.observe(ran - decoded)
        series.postprocess.observe(done - ran)
        series.batch_size.observe(1)
        series.images.inc(1)

    def _series(self, model: LoadedModel) -> _Series:
        series = self._model_series.get(model.key)
        if series is None:
            meta = model.metadata
            stage = self.metrics.stage_seconds
            series = self._model_series[model.key] = _Series(
                preprocess=stage.labels(meta.name, meta.version, "preprocess"),
                inference=stage.labels(meta.name, meta.version, "inference"),
                postprocess=stage.labels(meta.name, meta.version, "postprocess"),
                batch_size=self.metrics.batch_size.labels(meta.name, meta.version),
                images=self.metrics.images.labels(meta.name, meta.version, meta.task),
            )
        return series

    async def _predict(
        self, model: LoadedModel, files: Sequence[tuple[str, bytes | Path]], params: Any
    ) -> list[Prediction]:
        meta = model.metadata
        batcher = self.batcher(model)
        if len(files) == 1 and batcher.idle():
            name, data = files[0]
            done = await asyncio.get_running_loop().run_in_executor(
                self._prep_pool, self._alone, model, name, data, params
            )
            if isinstance(done, tuple):
                predictions, times = done
                self.admission.observe_batch(model.key, 1, times[1], times[2])
                asyncio.get_running_loop().call_soon(self._record_alone, model, times)  # after the answer is sent
                return predictions
            prepared = [done]  # an inference started meanwhile: join the batch
        else:
            batcher.expect(len(files))
            started = time.perf_counter()
            try:
                prepared = await self._prepare_all(model, files)
            except BaseException:
                batcher.expect(-len(files))
                raise
            self._series(model).preprocess.observe(time.perf_counter() - started)
        outputs = await asyncio.gather(*(batcher.submit(p.array) for p in prepared))

        def postprocess() -> list[Prediction]:
            started = time.perf_counter()
            predictions = [
                Prediction(p, out, {} if params is None else model.task.postprocess(out, p.geometry, meta, params))
                for p, out in zip(prepared, outputs, strict=True)
            ]
            self._series(model).postprocess.observe(time.perf_counter() - started)
            return predictions

        # Light postprocessing (top-k, box mapping) costs less than a thread hop; masks do not.
        if model.task.inline_postprocess or params is None:
            predictions = postprocess()
        else:
            predictions = await asyncio.get_running_loop().run_in_executor(self._prep_pool, postprocess)
        self._series(model).images.inc(len(files))
        return predictions

    async def offload(self, function: Any, *args: Any) -> Any:
        """Run blocking work (rendering, encoding, file I/O) on the preprocessing threads."""
        return await asyncio.get_running_loop().run_in_executor(self._prep_pool, function, *args)

    def _live(self, model: LoadedModel) -> None:
        """A live request (any protocol) is here: evaluation yields to it (eval_pace, the batcher's pieces)."""
        self._last_live = time.perf_counter()
        self.batcher(model).note_live()

    def eval_pace(self, spent_s: float) -> None:
        """Called by evaluation's thread after each image it decoded or scored in `spent_s`: while live
        requests came in the last quarter second, it rests as long (at most half a core, and the GIL free)."""
        if time.perf_counter() - self._last_live < 0.25:
            time.sleep(min(max(spent_s, 0.0002), 0.05))

    async def run_background(self, model: LoadedModel, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Evaluation's route into the batcher: its images run only where live ones leave room (see
        MicroBatcher.submit_background), and never count against live requests' admission."""
        return await self.batcher(model).submit_background(batch)

    def shutdown(self) -> None:
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        self.eval_pool.shutdown(wait=False, cancel_futures=True)
