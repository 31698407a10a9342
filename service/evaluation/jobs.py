"""Evaluation jobs: submitted over HTTP, queued and run in the background, their state in SQLite.

`OPTIC_DATA_DIR/evaluations.sqlite3` holds every job (state, progress, error, result); each job's folder
`OPTIC_DATA_DIR/jobs/ID/` holds its extracted upload while it waits or runs, and its report afterwards. Every
worker process schedules from the same database: a job is claimed by one of them in a transaction, at most
OPTIC_EVALUATION_CONCURRENCY run at once, OPTIC_EVALUATION_QUEUE_LENGTH more may wait. A running job writes
its progress and a heartbeat; a job whose worker is gone (a restart, a crash) is marked failed, reason
`interrupted`; queued jobs survive a restart and run after it. Evaluation images go through the batcher's
background lane: live requests first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import (
    InvalidParameter,
    JobFinished,
    OpticError,
    PathNotAllowed,
    QueueFull,
    UnknownJob,
    UnknownModel,
)
from service.evaluation.archive import extract_archive
from service.evaluation.runner import Cancelled, Evaluation, RunOptions, compare, evaluate, read_dataset

if TYPE_CHECKING:
    from service.repository import LoadedModel
    from service.service import Optic

log = logging.getLogger("bentoml.optic")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 0.5  # progress and heartbeat written this often; the cancel flag read as often
STALE_S = 30.0  # a running job whose heartbeat is this old has lost its worker
TICK_S = 0.5  # how often an idle worker looks for queued jobs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    models TEXT NOT NULL,
    source TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    rate REAL,
    owner TEXT,
    heartbeat REAL,
    cancel INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    artifacts TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
"""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), which a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or '?'}"


def _owner_gone(owner: str | None) -> bool:
    """True where the owner ran on this host and that process no longer exists (or is another one now)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's: only its heartbeat tells
    return _process_start(int(pid)) != started


class JobStore:
    """The jobs table. Every call is short; callers run them off the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert(self, job_id: str, models: list[str], source: dict[str, Any], limit: int) -> None:
        """Queue a job, refused when `limit` jobs already wait or run."""
        with self._transaction() as db:
            (pending,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()
            if pending >= limit:
                raise QueueFull(
                    f"{pending} evaluation jobs are queued or running, the most this server takes "
                    "(OPTIC_EVALUATION_CONCURRENCY + OPTIC_EVALUATION_QUEUE_LENGTH): try again later",
                    headers={"retry-after": "30"},
                )
            db.execute(
                "INSERT INTO jobs (id, state, created_at, models, source) VALUES (?, 'queued', ?, ?, ?)",
                (job_id, time.time(), json.dumps(models), json.dumps(source)),
            )

    def claim(self, owner: str, concurrency: int) -> sqlite3.Row | None:
        """The oldest queued job, now running and owned by `owner`, unless `concurrency` already run."""
        with self._transaction() as db:
            (running,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone()
            if running >= concurrency:
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, started_at = ?, heartbeat = ? WHERE id = ?",
                (owner, now, now, row["id"]),
            )
            return db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()

    def get(self, job_id: str) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def recent(self, state: str | None, limit: int) -> list[sqlite3.Row]:
        columns = "id, state, created_at, started_at, finished_at, models, source, done, total, rate, cancel, error"
        with self._lock:
            if state:
                query = f"SELECT {columns} FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?"
                return self._db.execute(query, (state, limit)).fetchall()
            query = f"SELECT {columns} FROM jobs ORDER BY created_at DESC LIMIT ?"
            return self._db.execute(query, (limit,)).fetchall()

    def beat(self, job_id: str, done: int, total: int, rate: float | None) -> bool:
        """Progress and heartbeat; True when a cancel was asked for."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET done = ?, total = ?, rate = ?, heartbeat = ? WHERE id = ? AND state = 'running'",
                (done, total, rate, time.time(), job_id),
            )
            row = self._db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        artifacts: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ?, artifacts = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state, time.time(), _dumps(error), _dumps(result), _dumps(artifacts), job_id),
            )

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job at once, ask a running one to stop; the state it is in after the call."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"no evaluation job {job_id!r} (GET /evaluations lists them)")
            if row["state"] in FINISHED:
                raise JobFinished(f"evaluation job {job_id} has already {row['state']}: there is nothing to cancel")
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ? WHERE id = ?",
                    (time.time(), _dumps({"error": "cancelled before it ran", "reason": "cancelled"}), job_id),
                )
                return "cancelled"
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
            return "running"

    def interrupt_lost(self, owners_of_mine: set[str] | None = None) -> list[str]:
        """Mark failed (reason `interrupted`) the running jobs whose worker is gone: a process of this host that
        no longer exists, a heartbeat older than STALE_S, or (`owners_of_mine`) this worker's own, at shutdown."""
        lost = []
        now = time.time()
        with self._transaction() as db:
            for row in db.execute("SELECT id, owner, heartbeat FROM jobs WHERE state = 'running'").fetchall():
                mine = owners_of_mine is not None and row["owner"] in owners_of_mine
                stale = row["heartbeat"] is None or now - row["heartbeat"] > STALE_S
                if mine or _owner_gone(row["owner"]) or stale:
                    error = {
                        "error": "the server stopped while this job ran (a restart, a crash or a shutdown): "
                        "submit it again",
                        "reason": "interrupted",
                    }
                    db.execute(
                        "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                        (now, _dumps(error), row["id"]),
                    )
                    lost.append(row["id"])
        return lost


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def describe(row: sqlite3.Row, *, full: bool = True) -> dict[str, Any]:
    """A job as the API shows it."""
    keys = row.keys()
    done, total, rate = row["done"], row["total"], row["rate"]
    eta = round((total - done) / rate, 1) if rate and row["state"] == "running" and total >= done else None
    job_id = row["id"]
    doc: dict[str, Any] = {
        "id": job_id,
        "state": row["state"],
        "models": _loads(row["models"]),
        "source": {k: v for k, v in _loads(row["source"]).items() if k != "folder"},  # no server paths
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "progress": {
            "done": done,
            "total": total,
            "fraction": round(done / total, 4) if total else 0.0,
            "images_per_second": None if rate is None else round(rate, 2),
            "eta_s": eta,
        },
        "cancel_requested": bool(row["cancel"]),
        "error": _loads(row["error"]),
        "links": {"self": f"/evaluations/{job_id}"},
    }
    if full and "result" in keys:
        doc["result"] = _loads(row["result"])
        artifacts = _loads(row["artifacts"]) or {}
        if artifacts:
            doc["links"].update(
                {
                    "report": f"/evaluations/{job_id}/report",
                    "images_json": f"/evaluations/{job_id}/images.json",
                    "images_csv": f"/evaluations/{job_id}/images.csv",
                    "plots": [f"/evaluations/{job_id}/{name}" for name in artifacts if name.startswith("plots/")],
                }
            )
    return doc


@dataclass
class _Running:
    job_id: str
    total: int
    done: int = 0
    started: float = 0.0
    cancel: bool = False


class Jobs:
    """One worker's side of the jobs: submission, its scheduler, the jobs it runs."""

    def __init__(self, service: Optic) -> None:
        self.service = service
        self.settings = service.settings
        self.root = self.settings.data_dir.resolve()
        self.store = JobStore(self.root / "evaluations.sqlite3")
        self.owner = process_identity()
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._interrupted(self.store.interrupt_lost(), "a restart")
        self._task = asyncio.get_running_loop().create_task(self._schedule())

    def _interrupted(self, job_ids: list[str], cause: str) -> None:
        """Jobs just marked interrupted: logged, counted, their uploaded data removed."""
        for job_id in job_ids:
            log.warning("evaluation job %s was interrupted by %s", job_id, cause)
            self.service.metrics.evaluation_jobs.labels("interrupted").inc()
            shutil.rmtree(self.job_dir(job_id) / "data", ignore_errors=True)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    # Submission (POST /evaluations), on the request's event loop; blocking parts on threads.

    def resolve_models(self, specs: list[str]) -> list[LoadedModel]:
        if not specs:
            raise InvalidParameter("name the model to evaluate: `model` (NAME or NAME:VERSION) or `models` (a,b)")
        models = [self.service.repository.get(spec) for spec in specs]
        tasks = {m.metadata.task for m in models}
        if len(tasks) > 1:
            raise InvalidParameter(f"the models of one job must share a task; these are {', '.join(sorted(tasks))}")
        return models

    def resolve_path(self, text: str) -> Path:
        root = self.settings.datasets_root
        if root is None:
            raise PathNotAllowed("`path` jobs need OPTIC_DATASETS_ROOT set on the server; upload `dataset` instead")
        root = root.resolve()
        candidate = Path(text)
        target = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not target.is_relative_to(root):
            raise PathNotAllowed(f"path {text!r} is outside the datasets root (OPTIC_DATASETS_ROOT)")
        if not target.is_dir():
            raise InvalidParameter(f"path {text!r} is not a folder under the datasets root", reason="invalid_path")
        return target

    async def submit(self, models: list[LoadedModel], *, archive: Path | None, path: Path | None) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:16]
        settings = self.settings
        folder = self.job_dir(job_id)
        try:
            if archive is not None:
                root = await asyncio.to_thread(
                    extract_archive, archive, folder / "data",
                    max_bytes=settings.max_archive_bytes, max_members=settings.max_archive_members,
                )  # fmt: skip
                source = {"kind": "upload", "folder": str(root)}
            else:
                assert path is not None
                root = path
                relative = path.relative_to(settings.datasets_root.resolve()) if settings.datasets_root else path
                source = {"kind": "path", "path": str(relative), "folder": str(root)}
            # Ground truth read now, so a data set the models cannot use is refused with this request.
            for model in {tuple(m.metadata.labels): m for m in models}.values():
                await asyncio.to_thread(read_dataset, model, root.resolve())
            keys = [m.key for m in models]
            limit = settings.evaluation_concurrency + settings.evaluation_queue_length
            await asyncio.to_thread(self.store.insert, job_id, keys, source, limit)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise
        self.service.metrics.evaluation_jobs.labels("submitted").inc()
        self._wake.set()
        row = await asyncio.to_thread(self.store.get, job_id)
        assert row is not None
        return describe(row)

    # The scheduler: claim queued jobs while fewer than the concurrency run.

    async def _schedule(self) -> None:
        checked = 0.0
        while True:
            try:
                if time.monotonic() - checked > 5:  # other workers' lost jobs (a crash leaves no one to say)
                    checked = time.monotonic()
                    lost = await asyncio.to_thread(self.store.interrupt_lost)
                    await asyncio.to_thread(self._interrupted, lost, "its worker's end")
                while len(self._running) < self.settings.evaluation_concurrency:
                    row = await asyncio.to_thread(self.store.claim, self.owner, self.settings.evaluation_concurrency)
                    if row is None:
                        break
                    task = asyncio.get_running_loop().create_task(self._run(row))
                    self._running[row["id"]] = task
                    task.add_done_callback(functools.partial(self._ended, row["id"]))
            except Exception:  # the scheduler outlives any one failure
                log.exception("evaluation scheduler")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    def _ended(self, job_id: str, _: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()  # a slot is free: the next queued job starts now

    async def _run(self, row: sqlite3.Row) -> None:
        job_id = row["id"]
        source = json.loads(row["source"])
        root = Path(source["folder"]).resolve()
        keys: list[str] = json.loads(row["models"])
        state = _Running(job_id, total=0, started=time.perf_counter())
        beat = asyncio.get_running_loop().create_task(self._beat(state))
        pipeline = self.service.pipeline
        settings = self.settings
        try:
            models = []
            for key in keys:
                try:
                    models.append(self.service.repository.get(key))
                except UnknownModel as exc:
                    raise UnknownModel(f"{exc.message} (it was retired after the job was submitted)") from None
            datasets = {}  # the ground truth is read against a model's labels: once per distinct label list
            for model in models:
                labels = tuple(model.metadata.labels)
                if labels not in datasets:
                    datasets[labels] = await asyncio.to_thread(read_dataset, model, root)
            per_model = len(next(iter(datasets.values())).items)
            state.total = per_model * len(models)
            evaluations: list[Evaluation] = []
            for k, model in enumerate(models):

                def progress(done: int, total: int, k: int = k) -> None:
                    state.done = k * per_model + done

                options = RunOptions(
                    settings.max_image_pixels, settings.max_batch_size, pipeline.eval_pool,
                    progress=progress, cancelled=lambda: state.cancel, pace=pipeline.eval_pace,
                )  # fmt: skip
                dataset = datasets[tuple(model.metadata.labels)]
                evaluation = await evaluate(model, dataset, root, pipeline.run_background, options)
                evaluation.records = []  # scored: only the report and per-image results are kept
                evaluations.append(evaluation)
                self.service.metrics.evaluation_scores(evaluation.report)
            result = {
                "evaluations": [e.report for e in evaluations],
                "comparison": compare([e.report for e in evaluations]),
            }
            await self._last_beat(state)
            artifacts = await asyncio.get_running_loop().run_in_executor(
                pipeline.eval_pool, write_artifacts, result, [e.images for e in evaluations], self.job_dir(job_id)
            )
            await self._end(job_id, "succeeded", result=result, artifacts=artifacts)
        except Cancelled:
            await self._last_beat(state)
            await self._end(job_id, "cancelled", error={"error": "cancelled while it ran", "reason": "cancelled"})
        except OpticError as exc:
            await self._last_beat(state)
            await self._end(job_id, "failed", error=exc.to_json())
        except asyncio.CancelledError:  # the worker is stopping: stop() marks it
            raise
        except Exception as exc:
            log.exception("evaluation job %s failed", job_id)
            error = {"error": f"the evaluation failed: {type(exc).__name__}: {exc}", "reason": "internal_error"}
            await self._end(job_id, "failed", error=error)
        finally:
            beat.cancel()
            if source["kind"] == "upload":
                await asyncio.to_thread(shutil.rmtree, self.job_dir(job_id) / "data", True)

    async def _end(self, job_id: str, state: str, **outcome: Any) -> None:
        await asyncio.to_thread(functools.partial(self.store.finish, job_id, state, **outcome))
        self.service.metrics.evaluation_jobs.labels(state).inc()

    async def _beat(self, state: _Running) -> None:
        while True:
            await self._last_beat(state)
            await asyncio.sleep(HEARTBEAT_S)

    async def _last_beat(self, state: _Running) -> None:
        elapsed = time.perf_counter() - state.started
        rate = state.done / elapsed if state.done and elapsed > 0 else None
        state.cancel = await asyncio.to_thread(self.store.beat, state.job_id, state.done, state.total, rate)

    async def stop(self) -> None:
        """At shutdown: this worker's running jobs are marked interrupted now (not at the next start)."""
        if self._task is not None:
            self._task.cancel()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=5)
            lost = await asyncio.to_thread(self.store.interrupt_lost, {self.owner})
            await asyncio.to_thread(self._interrupted, lost, "the shutdown")


def write_artifacts(result: dict[str, Any], images: list[list[dict[str, Any]]], folder: Path) -> dict[str, str]:
    """The report, plots and per-image results of a finished job, in its folder; {name: relative path}."""
    from service.evaluation.report import write_report

    return write_report(result, images, folder / "report")
