"""The one evaluation runner: ground truth from a data set folder, predictions through the pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import OpticError
from service.pipeline import Prepared, prepare
from service.repository import LoadedModel
from service.tasks.base import Outputs

RunBatch = Callable[[LoadedModel, np.ndarray], Awaitable[list[Outputs]]]


async def evaluate_folder(
    model: LoadedModel,
    root: Path,
    run_batch: RunBatch,
    *,
    max_pixels: int,
    batch_size: int = 16,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Predict every image of the data set at `root` and score it with the task's metrics."""
    started = time.perf_counter()
    root = root.resolve()  # readers may hand back resolved paths; names are shown relative to the root
    loop = asyncio.get_running_loop()
    task, meta = model.task, model.metadata
    dataset = await loop.run_in_executor(executor, task.load_eval_dataset, root, meta)
    params = task.eval_params(meta)
    outputs: list[Outputs] = []
    results: list[dict[str, Any]] = []

    def prepare_chunk(items: list[Any]) -> list[Prepared]:
        prepared = []
        for item in items:
            try:
                data = item.path.read_bytes()
                prepared.append(prepare(model, data, str(item.path.relative_to(root)), max_pixels))
            except OpticError as exc:
                exc.reason = "invalid_dataset"
                raise
        return prepared

    def postprocess_chunk(chunk: list[Prepared], chunk_outputs: list[Outputs]) -> list[dict[str, Any]]:
        return [task.postprocess(out, p.geometry, meta, params) for p, out in zip(chunk, chunk_outputs, strict=True)]

    for start in range(0, len(dataset.items), batch_size):
        chunk = await loop.run_in_executor(executor, prepare_chunk, dataset.items[start : start + batch_size])
        chunk_outputs = await run_batch(model, np.stack([p.array for p in chunk]))
        outputs.extend(chunk_outputs)
        results.extend(await loop.run_in_executor(executor, postprocess_chunk, chunk, chunk_outputs))
    metrics = await loop.run_in_executor(executor, task.compute_metrics, dataset, outputs, results, meta)
    return {
        "model": {"name": meta.name, "version": meta.version, "task": meta.task},
        "dataset": {"num_images": len(dataset.items), **dataset.info},
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
    }


def evaluate_offline(model: LoadedModel, root: Path, *, max_pixels: int, batch_size: int = 16) -> dict[str, Any]:
    """`optic eval`: the same runner, the session called directly."""

    async def run_batch(m: LoadedModel, batch: np.ndarray) -> list[Outputs]:
        return m.run(batch)

    return asyncio.run(evaluate_folder(model, root, run_batch, max_pixels=max_pixels, batch_size=batch_size))
