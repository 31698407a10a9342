"""Model versions that change without a restart: the repository folder is polled, new versions are loaded off
the serving path (warmed at every batch size) and take traffic only once ready, and retired versions finish
what they run.

Each poll (`OPTIC_REPOSITORY_POLL_S`, 0: off) compares the folder with what is served. A version folder not yet
served is read, sha256-verified, given its sessions and warmed on a worker thread, while the current set keeps
serving; then the served set is replaced, in one assignment, by a new snapshot (`ModelRepository`): a request
sees the old set or the new one, never a mix, and a request already running keeps the model it resolved until
it is done. A version that fails to load never replaces one that works: it is reported (in `/models`, the v2
repository index, `optic_model_switches_total{outcome="failed"}` and the log) and retried only once its files
change. A version whose folder is gone, or that the version policy (`OPTIC_VERSION_POLICY`) no longer keeps,
leaves the next snapshot. Every worker process polls for itself, so all converge within one interval.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.repository import (
    LoadedModel,
    ModelLoadError,
    ModelRepository,
    _version_key,
    load_model,
    version_dirs,
)

if TYPE_CHECKING:
    from service.service import Optic

log = logging.getLogger("bentoml.optic")


def signature(version_dir: Path) -> tuple[int, ...]:
    """What tells a version's files changed: their sizes and modification times."""
    stamp: list[int] = []
    for name in ("model.json", "model.onnx"):
        try:
            stat = (version_dir / name).stat()
            stamp += [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stamp += [-1, -1]
    return tuple(stamp)


CONTROL_TICK_S = 0.5  # how soon a load or unload call made on one worker reaches the others


def control_path() -> Path:
    """One file per server: its workers share a parent, the `bentoml serve` process."""
    return Path(tempfile.gettempdir()) / f"optic-model-control-{os.getppid()}.json"


class ControlFile:
    """The models unloaded by calls, shared by every worker of one server: written under a lock, replaced in
    one rename, read by each worker's tick."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> set[str]:
        try:
            return set(json.loads(self.path.read_text()).get("unloaded", []))
        except (OSError, ValueError):
            return set()

    def update(self, name: str, *, unload: bool) -> set[str]:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            unloaded = self.read()
            (unloaded.add if unload else unloaded.discard)(name)
            staging = self.path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(json.dumps({"unloaded": sorted(unloaded)}))
            os.replace(staging, self.path)
        return unloaded


def candidates(policy: str, versions: list[str]) -> tuple[list[str], int]:
    """The versions the policy may serve, newest first, and how many of them: `all`, `latest:N` (the N newest
    that load: a broken one never pushes out the working version below it), or `specific:V1,V2`."""
    kind, _, value = policy.partition(":")
    newest_first = versions[::-1]
    if kind == "latest":
        return newest_first, int(value or 1)
    if kind == "specific":
        wanted = {v.strip() for v in value.split(",")}
        newest_first = [v for v in newest_first if v in wanted]
    return newest_first, len(newest_first)


class Lifecycle:
    def __init__(self, service: Optic, on_swap: Callable[[ModelRepository], None]) -> None:
        self.service = service
        self.settings = service.settings
        self.on_swap = on_swap
        self._failed: dict[str, tuple[tuple[int, ...], str]] = {}  # NAME/VERSION -> (files' signature, reason)
        self._loaded_sig: dict[str, tuple[int, ...]] = {}
        for model in service.repository:
            self._loaded_sig[_key(model)] = signature(model.path)
        self._lock = asyncio.Lock()
        self.control = ControlFile(control_path())
        self.unloaded: set[str] = self.control.read() if self.settings.model_control else set()

    async def run(self) -> None:
        """Poll the folder (when polling) and the control file (when control is on) forever; a failure is
        logged and the next round tries again."""
        settings = self.settings
        tick = min(settings.repository_poll_s or 3600.0, CONTROL_TICK_S if settings.model_control else 3600.0)
        next_poll = asyncio.get_running_loop().time() + settings.repository_poll_s
        while True:
            await asyncio.sleep(tick)
            try:
                if settings.model_control:
                    await self.apply_control()
                if settings.repository_poll_s and asyncio.get_running_loop().time() >= next_poll:
                    next_poll += settings.repository_poll_s
                    await self.sync()
            except Exception:
                log.exception("updating the served models failed; serving what was loaded")

    async def apply_control(self) -> None:
        """What any worker's load or unload call wrote to the control file, applied here."""
        await self.adopt(self.control.read())

    async def adopt(self, unloaded: set[str], also: frozenset[str] = frozenset()) -> None:
        """Serve by a new set of unloaded models: the names that changed, and `also`, are brought in line."""
        changed = (unloaded ^ self.unloaded) | also
        self.unloaded = unloaded
        if changed:
            await self.sync(only=changed)

    async def sync(self, only: set[str] | None = None) -> None:
        """Bring the served set in line with the folder: every model (polling) or only the `only` names (a load
        or unload call; the others stay as they are)."""
        async with self._lock:
            await self._sync(only)

    async def _sync(self, only: set[str] | None) -> None:
        root = self.settings.model_repository
        current = self.service.repository
        served = {_key(m): m for m in current}
        on_disk: dict[str, dict[str, Path]] = {}
        for version_dir in version_dirs(root):
            on_disk.setdefault(version_dir.parent.name, {})[version_dir.name] = version_dir
        kept: list[LoadedModel] = []
        failures: dict[str, str] = {}
        for name in sorted(set(on_disk) | {m.metadata.name for m in current} | {k.split("/")[0] for k in
                                                                                 current.failures}):  # fmt: skip
            if name in self.unloaded:
                continue  # unloaded by a call: out until loaded again
            if only is not None and name not in only:  # not asked about: exactly as served
                kept += [m for m in current if m.metadata.name == name]
                failures.update({k: v for k, v in current.failures.items() if k.split("/")[0] == name})
                continue
            dirs = on_disk.get(name, {})
            wanted, limit = candidates(self.settings.version_policy, sorted(dirs, key=_version_key))
            healthy = 0
            for version in wanted:
                if healthy >= limit:
                    break
                key = f"{name}/{version}"
                model = await self._ensure(key, dirs[version], served.get(key))
                if model is None:
                    failures[key] = self._failed[key][1]
                    continue
                kept.append(model)
                healthy += 1
        metrics = self.service.metrics
        kept_keys = {_key(m) for m in kept}
        if kept_keys == set(served) and failures == current.failures:
            return
        snapshot = ModelRepository(kept, failures)
        self.on_swap(snapshot)
        for key, model in served.items():
            if key not in kept_keys:
                metrics.model_live(model, False)
                metrics.switches.labels(model.metadata.name, "retired").inc()
                self._loaded_sig.pop(key, None)
                log.info("retired %s: requests already running on it finish on it", key)

    async def _ensure(self, key: str, version_dir: Path, served: LoadedModel | None) -> LoadedModel | None:
        """The served model if its files are unchanged, else a freshly loaded one; None if it cannot load."""
        stamp = signature(version_dir)
        if served is not None and self._loaded_sig.get(key) == stamp:
            return served
        failed = self._failed.get(key)
        if failed is not None and failed[0] == stamp:
            return served  # known broken, files unchanged: not retried (the working one, if any, stays)
        metrics = self.service.metrics
        name = version_dir.parent.name
        try:
            model = await asyncio.to_thread(load_model, version_dir, self.settings, every_batch_size=True)
        except ModelLoadError as exc:
            self._failed[key] = (stamp, str(exc))
            metrics.switches.labels(name, "failed").inc()
            metrics.load_failures.labels(name).inc()
            log.error("not serving %s: %s%s", key, exc, " (the loaded one keeps serving)" if served else "")
            return served
        self._failed.pop(key, None)
        self._loaded_sig[key] = stamp
        metrics.model_live(model, True)
        metrics.switches.labels(name, "loaded").inc()
        log.info("loaded %s on %s in %.2f s; it takes traffic now", key, model.provider, model.load_seconds)
        return model


def _key(model: LoadedModel) -> str:
    return f"{model.metadata.name}/{model.metadata.version}"


async def control(lifecycle: Lifecycle, name: str, *, unload: bool) -> None:
    """A load or unload call: recorded for every worker, applied on this one before the answer."""
    unloaded = await asyncio.to_thread(lifecycle.control.update, name, unload=unload)
    await lifecycle.adopt(unloaded, also=frozenset({name}))
