"""The raw ONNX Runtime limit, in process, with the service's own code and settings.

At concurrency c an ideal batched server runs c images per session.run (capped at the batch size the
service would form), so that is what this does: decode + preprocess the batch with `service.pipeline.prepare`,
`model.run(np.stack(...))`, then the task's postprocess. Every image's latency is its batch's wall time.
Nothing else runs meanwhile (the server is not started yet), and ORT uses the service's thread settings, so
intra-op threads never exceed the cores. Each level is repeated and the best repeat (by throughput) is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import BenchImage
from bench.machine import CpuWindow, machine_busy_s, own_cpu_s
from service.pipeline import prepare
from service.repository import LoadedModel, ModelLoadError, version_dirs
from service.settings import Settings


@dataclass
class RawLevel:
    concurrency: int
    batch_size: int
    images: int
    seconds: float
    latencies_ms: list[float]
    # Mean milliseconds: decode + preprocess per image, session.run per batch, postprocess per image.
    stage_ms: dict[str, float]
    cpu_ms_per_image: float = 0.0  # this process's CPU time (all ORT threads) per image
    other_cores: float = 0.0  # CPU other processes used meanwhile (see bench.machine)
    repeat_throughputs: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def find_version_dirs(repository: Path) -> list[Path]:
    """Every NAME/VERSION folder, in the order the service loads them."""
    if not repository.is_dir():
        raise ModelLoadError(f"model repository {repository} does not exist")
    return version_dirs(repository)


def service_batch_size(model: LoadedModel, settings: Settings) -> int:
    """The largest batch the service's batcher forms for this model (see Pipeline.batcher)."""
    return min(settings.max_batch_size, model.max_batch_size or 1 << 30)


def _one_pass(model: LoadedModel, images: list[BenchImage], batch_size: int, seconds: float,
              max_pixels: int, params: Any, busy: bool = False) -> tuple[int, float, list[float], dict[str, float]]:
    meta, task = model.metadata, model.task
    latencies: list[float] = []
    prep_s = run_s = post_s = 0.0
    done = batches = 0
    cursor = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        batch = [images[(cursor + i) % len(images)] for i in range(batch_size)]
        cursor = (cursor + batch_size) % len(images)
        t0 = time.perf_counter()
        prepared = [prepare(model, image.data, image.name, max_pixels) for image in batch]
        t1 = time.perf_counter()
        outputs = model.run(np.stack([p.array for p in prepared]), busy)
        t2 = time.perf_counter()
        for p, out in zip(prepared, outputs, strict=True):
            task.postprocess(out, p.geometry, meta, params)
        t3 = time.perf_counter()
        prep_s, run_s, post_s = prep_s + t1 - t0, run_s + t2 - t1, post_s + t3 - t2
        latencies.extend([(t3 - t0) * 1000] * batch_size)
        done += batch_size
        batches += 1
        if t3 >= deadline:
            break
    elapsed = time.perf_counter() - started
    stages = {"preprocess_per_image": prep_s / done * 1000, "run_per_batch": run_s / batches * 1000,
              "postprocess_per_image": post_s / done * 1000}
    return done, elapsed, latencies, stages


def measure(model: LoadedModel, images: list[BenchImage], concurrency: int, settings: Settings, *,
            seconds: float, repeats: int) -> RawLevel:
    """Best of `repeats` passes of about `seconds` each at `concurrency` images per batch (capped), with each of
    the model's sessions (spinning, and the non-spinning one optic uses under load): the limit is the best."""
    batch_size = max(1, min(concurrency, service_batch_size(model, settings)))
    params = model.task.default_params(model.metadata)
    max_pixels = settings.max_image_pixels
    best: RawLevel | None = None
    throughputs: list[float] = []
    modes = (False, True) if model.busy_session is not None else (False,)
    for _, busy in [(r, b) for r in range(max(1, repeats)) for b in modes]:
        _one_pass(model, images, batch_size, 0.0, max_pixels, params, busy)  # one untimed batch: caches, allocator
        machine, ours = machine_busy_s(), own_cpu_s()
        done, elapsed, latencies, stages = _one_pass(model, images, batch_size, seconds, max_pixels, params, busy)
        cpu = CpuWindow(elapsed, machine_busy_s() - machine, own_cpu_s() - ours)
        level = RawLevel(concurrency, batch_size, done, elapsed, latencies, stages,
                         cpu.ours_s / done * 1000, cpu.other_cores)
        throughputs.append(level.throughput)
        if best is None or level.throughput > best.throughput:
            best = level
    assert best is not None
    best.repeat_throughputs = throughputs
    return best
