"""The one evaluation runner behind POST /evaluate, evaluation jobs, `optic eval` and its shards.

An evaluation is: read the data set's ground truth (the task's reader), predict every image through the
pipeline and keep one compact record per image (the task's `eval_record`), then score the records (the task's
`score`). Records are JSON: a shard's records saved to a file and merged with the others' are scored by the
same call as one run's, so the numbers are the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidDataset, OpticError
from service.metadata import ModelMetadata
from service.pipeline import Prepared, prepare
from service.repository import LoadedModel
from service.tasks import get_task
from service.tasks.base import EvalDataset, EvalItem

# A stacked uint8 batch in, every output with its batch dimension out.
RunBatch = Callable[[LoadedModel, np.ndarray], Awaitable[dict[str, np.ndarray]]]
PREDICTIONS_FORMAT = "optic-predictions/1"


class Cancelled(Exception):
    """The job was cancelled while it ran."""


@dataclass(frozen=True)
class Shard:
    """Images i with i % count == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes I/N (e.g. 0/3), not {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text}: needs 0 <= I < N")
        return cls(index, count)


@dataclass(frozen=True)
class RunOptions:
    """How a run takes its images through the model: limits, the threads it decodes on, its hooks."""

    max_pixels: int
    batch_size: int = 16
    executor: Executor | None = None  # decoding and scoring (None: the loop's default threads)
    shard: Shard = Shard()
    progress: Callable[[int, int], None] | None = None  # (images done, images in the shard)
    cancelled: Callable[[], bool] | None = None  # checked between chunks: True raises Cancelled
    pace: Callable[[float], None] | None = None  # called with each image's seconds of decoding or scoring


@dataclass
class Evaluation:
    """One model's evaluation: the report (model, dataset, metrics, seconds), each image's result for error
    analysis, and the records scoring used (what a shard saves)."""

    report: dict[str, Any]
    images: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def dataset_fingerprint(dataset: EvalDataset, root: Path) -> str:
    """The same files in the same order (shards of one data set agree on it)."""
    digest = hashlib.sha256()
    for item in dataset.items:
        digest.update(str(item.path.relative_to(root)).encode() + b"\0")
    return digest.hexdigest()[:16]


def public_dataset_info(dataset: EvalDataset) -> dict[str, Any]:
    """The reader's description of the data (format, split, ...), without its bulky internals."""
    return {
        k: v
        for k, v in dataset.info.items()
        if not k.startswith("_") and k not in ("coco", "label_to_category") and isinstance(v, (str, int, float))
    }


def read_dataset(model: LoadedModel, root: Path) -> EvalDataset:
    dataset = model.task.load_eval_dataset(root, model.metadata)
    if not dataset.items:
        raise InvalidDataset("the data set holds no images")
    return dataset


async def predict_records(
    model: LoadedModel, dataset: EvalDataset, root: Path, run_batch: RunBatch, options: RunOptions
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every image of the shard through the model, one record each (with its index and file), in data set
    order; and the task's data-set-level info for scoring. Decoding the next chunk overlaps the current run."""
    loop = asyncio.get_running_loop()
    task, meta = model.task, model.metadata
    executor, shard, pace, batch_size = options.executor, options.shard, options.pace, options.batch_size
    info = await loop.run_in_executor(executor, task.eval_info, dataset)
    params = task.eval_params(meta)
    indexed = [(i, item) for i, item in enumerate(dataset.items) if i % shard.count == shard.index]
    chunks = [indexed[start : start + batch_size] for start in range(0, len(indexed), batch_size)]
    records: list[dict[str, Any]] = []

    def prepare_chunk(chunk: list[tuple[int, EvalItem]]) -> tuple[list[Prepared], np.ndarray]:
        prepared = []
        for _, item in chunk:
            started = time.perf_counter()
            try:
                prepared.append(prepare(model, item.path, str(item.path.relative_to(root)), options.max_pixels))
            except OpticError as exc:
                exc.reason = "invalid_dataset"
                raise
            if pace is not None:
                pace(time.perf_counter() - started)
        return prepared, np.stack([p.array for p in prepared])

    def record_chunk(
        chunk: list[tuple[int, EvalItem]], prepared: list[Prepared], outputs: dict[str, np.ndarray]
    ) -> list[dict[str, Any]]:
        done = []
        for row, ((index, item), p) in enumerate(zip(chunk, prepared, strict=True)):
            started = time.perf_counter()
            own = {name: array[row] for name, array in outputs.items()}
            result = task.postprocess(own, p.geometry, meta, params)
            record = {"index": index, "file": str(item.path.relative_to(root))}
            record.update(task.eval_record(item, own, result, dataset, meta))
            done.append(record)
            if pace is not None:
                pace(time.perf_counter() - started)
        return done

    pending_records: asyncio.Future[list[dict[str, Any]]] | None = None
    following = loop.run_in_executor(executor, prepare_chunk, chunks[0]) if chunks else None
    for k, chunk in enumerate(chunks):
        if options.cancelled is not None and options.cancelled():
            raise Cancelled
        assert following is not None
        prepared, batch = await following
        following = loop.run_in_executor(executor, prepare_chunk, chunks[k + 1]) if k + 1 < len(chunks) else None
        outputs = await run_batch(model, batch)
        if pending_records is not None:
            records.extend(await pending_records)
        pending_records = loop.run_in_executor(executor, record_chunk, chunk, prepared, outputs)
        if options.progress is not None:
            options.progress(min(len(indexed), (k + 1) * batch_size), len(indexed))
    if pending_records is not None:
        records.extend(await pending_records)
    return records, info


def score(metadata: ModelMetadata, records: list[dict[str, Any]], info: dict[str, Any]) -> tuple[dict, list[dict]]:
    return get_task(metadata.task).score(records, info, metadata)


def timed(report: dict[str, Any], seconds: float) -> None:
    """The report's `seconds` and `images_per_second`, over the time given."""
    report["seconds"] = round(seconds, 3)
    report["images_per_second"] = round(report["dataset"]["num_images"] / seconds, 2) if seconds > 0 else None


def build_report(
    metadata: ModelMetadata, dataset: dict[str, Any], metrics: dict[str, Any], seconds: float
) -> dict[str, Any]:
    report = {
        "model": {"name": metadata.name, "version": metadata.version, "task": metadata.task},
        "dataset": dataset,
        "metrics": metrics,
    }
    timed(report, seconds)
    if "thresholds" in metrics:
        report["thresholds"] = metrics["thresholds"]
    return report


async def evaluate(
    model: LoadedModel, dataset: EvalDataset, root: Path, run_batch: RunBatch, options: RunOptions
) -> Evaluation:
    """One model on one data set: records, then scores (off the event loop)."""
    started = time.perf_counter()
    records, info = await predict_records(model, dataset, root, run_batch, options)
    loop = asyncio.get_running_loop()
    metrics, images = await loop.run_in_executor(options.executor, score, model.metadata, records, info)
    described = {"num_images": len(records), **public_dataset_info(dataset)}
    if options.shard.count > 1:
        described["shard"] = f"{options.shard.index}/{options.shard.count}"
    report = build_report(model.metadata, described, metrics, time.perf_counter() - started)
    return Evaluation(report, images, records, info)


async def evaluate_folder(model: LoadedModel, root: Path, run_batch: RunBatch, options: RunOptions) -> dict[str, Any]:
    """POST /evaluate: the report of one model on the data set at `root`."""
    root = root.resolve()  # readers may hand back resolved paths; names are shown relative to the root
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    dataset = await loop.run_in_executor(options.executor, read_dataset, model, root)
    evaluation = await evaluate(model, dataset, root, run_batch, options)
    timed(evaluation.report, time.perf_counter() - started)  # reading the ground truth included
    return evaluation.report


async def direct_run(model: LoadedModel, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Offline: the session called directly."""
    return model.run_batched(batch)


def evaluate_offline(
    model: LoadedModel, root: Path, *, max_pixels: int, batch_size: int = 16, shard: Shard = Shard()
) -> Evaluation:
    """`optic eval`: the same runner, the session called directly."""
    root = root.resolve()

    async def run() -> Evaluation:
        started = time.perf_counter()
        dataset = read_dataset(model, root)
        options = RunOptions(max_pixels, batch_size, shard=shard)
        evaluation = await evaluate(model, dataset, root, direct_run, options)
        timed(evaluation.report, time.perf_counter() - started)
        evaluation.info["fingerprint"] = dataset_fingerprint(dataset, root)
        evaluation.info["num_images"] = len(dataset.items)
        evaluation.info["dataset"] = public_dataset_info(dataset)
        return evaluation

    return asyncio.run(run())


# Shards: `optic eval --shard I/N --save-predictions FILE`, then `optic eval merge FILES...`.


def predictions_document(model: LoadedModel, evaluation: Evaluation, shard: Shard) -> dict[str, Any]:
    info = dict(evaluation.info)
    return {
        "format": PREDICTIONS_FORMAT,
        "model": model.metadata.model_dump(mode="json"),
        "shard": [shard.index, shard.count],
        "dataset": {
            "fingerprint": info.pop("fingerprint"),
            "num_images": info.pop("num_images"),
            **info.pop("dataset"),
        },
        "info": info,
        "records": evaluation.records,
    }


def save_predictions(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".partial")
    staged.write_text(json.dumps(document, separators=(",", ":")))
    staged.replace(path)  # a merge never reads half a file


def merge_predictions(documents: list[dict[str, Any]]) -> Evaluation:
    """Shard files back into one evaluation, refused unless they are the shards of one model on one data set,
    each image exactly once."""
    if not documents:
        raise ValueError("no prediction files to merge")
    for i, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("format") != PREDICTIONS_FORMAT:
            raise ValueError(f"file {i + 1} is not an optic predictions file ({PREDICTIONS_FORMAT})")
    first = documents[0]
    for doc in documents[1:]:
        for key, what in (("model", "model"), ("dataset", "data set"), ("info", "data set")):
            if doc[key] != first[key]:
                raise ValueError(f"the files are not shards of one run: their {what} differs")
    counts = {doc["shard"][1] for doc in documents}
    if len(counts) != 1:
        raise ValueError(f"the files come from different shard counts: {sorted(counts)}")
    count = counts.pop()
    seen = sorted(doc["shard"][0] for doc in documents)
    missing = sorted(set(range(count)) - set(seen))
    twice = sorted({i for i in seen if seen.count(i) > 1})
    if missing or twice:
        problems = ([f"missing {missing}"] if missing else []) + ([f"given twice {twice}"] if twice else [])
        raise ValueError(f"shards of {count}: {', '.join(problems)}")
    records = sorted((r for doc in documents for r in doc["records"]), key=lambda r: r["index"])
    total = first["dataset"]["num_images"]
    if [r["index"] for r in records] != list(range(total)):
        raise ValueError(f"the shards do not cover the {total} images exactly once")
    metadata = ModelMetadata.model_validate(first["model"])
    metrics, images = score(metadata, records, first["info"])
    dataset = {k: v for k, v in first["dataset"].items() if k != "fingerprint"}
    dataset["num_images"] = total
    report = build_report(metadata, dataset, metrics, 0.0)
    report["merged_shards"] = count
    return Evaluation(report, images, records, first["info"])


def compare(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several models on the same data side by side: every summary metric and per-class metric, with its
    delta against the first (the baseline). None for a single model."""
    if len(reports) < 2:
        return None
    names = [f"{r['model']['name']}:{r['model']['version']}" for r in reports]
    summaries = [r["metrics"].get("summary", {}) for r in reports]
    summary = []
    for metric in summaries[0]:
        values = [s.get(metric) for s in summaries]
        summary.append({"metric": metric, "values": values, "delta": _deltas(values)})
    per_class = []
    tables = [_per_class(r["metrics"]) for r in reports]
    for label, metrics in tables[0].items():
        for metric in metrics:
            values = [t.get(label, {}).get(metric) for t in tables]
            per_class.append({"label": label, "metric": metric, "values": values, "delta": _deltas(values)})
    return {"models": names, "baseline": names[0], "summary": summary, "per_class": per_class}


_PER_CLASS_METRICS = ("AP", "AP50", "precision", "recall", "f1", "IoU", "dice")


def _per_class(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    rows = metrics.get("per_class") or metrics.get("segm", {}).get("per_class", [])
    return {
        row["label"]: {m: row[m] for m in _PER_CLASS_METRICS if isinstance(row.get(m), (int, float))} for row in rows
    }


def _deltas(values: list[Any]) -> list[float | None]:
    base = values[0]
    return [
        None if not isinstance(v, (int, float)) or not isinstance(base, (int, float)) else v - base
        for v in values
    ]
