"""Units of evaluation at scale: the batcher's background lane, the F1 threshold, the jobs table."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import JobFinished, QueueFull, UnknownJob
from service.evaluation.jobs import JobStore, process_identity
from service.tasks.coco import best_f1

RUN_S = 0.002  # each image "runs" this long


def _batcher(log: list[tuple[str, int]]) -> tuple[MicroBatcher, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)

    def run(batch: np.ndarray, busy: bool) -> dict[str, np.ndarray]:
        kinds = {int(v) for v in batch[:, 0]}
        log.append(("background" if kinds == {1} else "live" if kinds == {0} else "mixed", len(batch)))
        time.sleep(RUN_S * len(batch))
        return {"out": batch[:, 0] * 10}

    return MicroBatcher(run, max_batch_size=16, max_wait_s=0.001, executor=pool), pool


def test_background_pieces_yield_to_live_images() -> None:
    log: list[tuple[str, int]] = []

    async def scenario() -> tuple[dict[str, np.ndarray], list[float]]:
        batcher, pool = _batcher(log)
        background = asyncio.ensure_future(batcher.submit_background(np.ones((64, 1))))
        await asyncio.sleep(0.01)
        waits = []
        for _ in range(20):  # live images one after another while the evaluation runs
            batcher.note_live()
            started = time.perf_counter()
            out = await batcher.submit(np.zeros(1))
            waits.append(time.perf_counter() - started)
            assert out["out"] == 0
            await asyncio.sleep(0.003)
        result = await background
        pool.shutdown()
        return result, waits

    result, waits = asyncio.run(scenario())
    assert result["out"].tolist() == [10] * 64  # every row back, in order, once all pieces ran
    assert "mixed" not in {kind for kind, _ in log}  # live images never share a run with evaluation
    assert sum(n for kind, n in log if kind == "background") == 64
    first = log.index(next(e for e in log if e[0] == "live"))
    later = [n for kind, n in log[first:] if kind == "background"]
    assert later and max(later) <= 2, log  # while live images come, pieces are cut to ~1 ms of inference
    # A live image waits at most for the piece already running (here ~1-2 images of 2 ms), not a batch of 16.
    assert sorted(waits)[-2] < 16 * RUN_S, waits


def test_background_runs_full_batches_when_nothing_else_comes() -> None:
    log: list[tuple[str, int]] = []

    async def scenario() -> None:
        batcher, pool = _batcher(log)
        await batcher.submit_background(np.ones((48, 1)))
        pool.shutdown()

    asyncio.run(scenario())
    assert log == [("background", 16)] * 3


def test_best_f1_threshold() -> None:
    # Scores, best first: hit, hit, miss, hit, miss; 4 ground-truth objects.
    best = best_f1(([0.9, 0.8, 0.7, 0.6, 0.5], [True, True, False, True, False]), 4)
    # At 0.8: P 1, R 0.5, F1 .667; at 0.6: P .75, R .75, F1 .75 (the best); at 0.5: P .6, R .75, F1 .667.
    assert best == {"score": 0.6, "precision": 0.75, "recall": 0.75, "f1": 0.75}
    # Equal scores are kept or dropped together: no threshold keeps one 0.7 and not the other.
    tied = best_f1(([0.7, 0.7, 0.4], [True, False, True]), 2)
    assert tied is not None and tied["score"] in (0.7, 0.4)
    assert best_f1(([], []), 3) is None and best_f1(([0.5], [False]), 0) is None


def test_job_store_claims_within_the_concurrency(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(3):
        store.insert(f"job{i}", ["digits:1"], {"kind": "path"}, limit=3)
    with pytest.raises(QueueFull, match="OPTIC_EVALUATION_QUEUE_LENGTH"):
        store.insert("job3", ["digits:1"], {"kind": "path"}, limit=3)
    other = JobStore(tmp_path / "jobs.sqlite3")  # another worker, the same database
    claimed: list[str] = []

    def claim(s: JobStore) -> None:
        row = s.claim(process_identity(), concurrency=2)
        if row is not None:
            claimed.append(row["id"])

    threads = [threading.Thread(target=claim, args=(s,)) for s in (store, other, store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ["job0", "job1"]  # two at most, oldest first, none twice
    assert store.cancel("job2") == "cancelled" and store.cancel("job0") == "running"
    assert store.beat("job0", 5, 10, 2.5) is True  # the running worker learns of the cancel
    with pytest.raises(JobFinished):
        store.cancel("job2")
    with pytest.raises(UnknownJob):
        store.cancel("nope")


def test_a_job_whose_worker_is_gone_is_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("alive", ["m:1"], {}, limit=10)
    store.insert("dead", ["m:1"], {}, limit=10)
    assert store.claim(process_identity(), 10)["id"] == "alive"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = process_identity(int(gone.stdout))  # that process has exited: its identity matches nothing
    assert store.claim(dead_owner, 10)["id"] == "dead"
    assert store.interrupt_lost() == ["dead"]
    row = store.get("dead")
    assert row["state"] == "failed" and '"reason":"interrupted"' in row["error"]
    assert store.get("alive")["state"] == "running"
    assert store.interrupt_lost({process_identity()}) == ["alive"]  # this worker's own, at its shutdown
