"""Model versions that change without a restart: the repository folder is polled, new versions are loaded off
the serving path and take traffic only once ready, and retired versions finish what they run.

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
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.repository import LoadedModel, ModelLoadError, ModelRepository, _version_key, load_model

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

    async def run(self) -> None:
        """Poll forever; a failed poll is logged and the next one tries again."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.sync()
            except Exception:
                log.exception("polling the model repository failed; serving what was loaded")

    async def sync(self) -> None:
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        root = self.settings.model_repository
        current = self.service.repository
        served = {_key(m): m for m in current}
        on_disk: dict[str, dict[str, Path]] = {}
        for version_dir in (p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
            if not version_dir.parent.name.startswith("."):
                on_disk.setdefault(version_dir.parent.name, {})[version_dir.name] = version_dir
        metrics = self.service.metrics
        kept: list[LoadedModel] = []
        failures: dict[str, str] = {}
        for name, dirs in sorted(on_disk.items()):
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
        kept_keys = {_key(m) for m in kept}
        if kept_keys == set(served) and failures == current.failures:
            return
        snapshot = ModelRepository(kept, failures)
        self.on_swap(snapshot)
        for key, model in served.items():
            if key not in kept_keys:
                meta = model.metadata
                metrics.model_info.labels(meta.name, meta.version, meta.task, model.provider, meta.sha256[:12]).set(0)
                metrics.switches.labels(meta.name, "retired").inc()
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
            model = await asyncio.to_thread(load_model, version_dir, self.settings)
        except ModelLoadError as exc:
            self._failed[key] = (stamp, str(exc))
            metrics.switches.labels(name, "failed").inc()
            metrics.load_failures.labels(name).inc()
            log.error("not serving %s: %s%s", key, exc, " (the loaded one keeps serving)" if served else "")
            return served
        self._failed.pop(key, None)
        self._loaded_sig[key] = stamp
        meta = model.metadata
        metrics.model_info.labels(meta.name, meta.version, meta.task, model.provider, meta.sha256[:12]).set(1)
        metrics.load_seconds.labels(meta.name).observe(model.load_seconds)
        metrics.switches.labels(meta.name, "loaded").inc()
        log.info("loaded %s on %s in %.2f s; it takes traffic now", key, model.provider, model.load_seconds)
        return model


def _key(model: LoadedModel) -> str:
    return f"{model.metadata.name}/{model.metadata.version}"
