"""The model repository: `NAME/VERSION/model.onnx` + `model.json`, every version loaded, verified, warmed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import UnknownModel, WrongTask
from service.metadata import ModelMetadata, sha256_file
from service.runtime import ProviderUnavailable, create_busy_session, create_session
from service.settings import Settings
from service.tasks import get_task
from service.tasks.base import Outputs, ServeTask

log = logging.getLogger("bentoml.optic")


class ModelLoadError(RuntimeError):
    pass


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


@dataclass
class LoadedModel:
    metadata: ModelMetadata
    session: ort.InferenceSession
    provider: str
    path: Path
    task: ServeTask
    busy_session: ort.InferenceSession | None = None  # CPU, spinning auto: the non-spinning one, for batches
    load_seconds: float = 0.0  # reading, verifying, the sessions and their warm-up
    input_name: str = field(init=False)
    output_names: list[str] = field(init=False)
    default_params: Any = field(init=False)  # the task's parameters for this model, built once

    def __post_init__(self) -> None:
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.default_params = self.task.default_params(self.metadata)

    @property
    def key(self) -> str:
        return f"{self.metadata.name}:{self.metadata.version}"

    @property
    def max_batch_size(self) -> int | None:
        spec = self.metadata.input
        return spec.max_batch_size if not spec.dynamic_batch else None

    def run(self, batch: np.ndarray, busy: bool = False) -> list[Outputs]:
        """Run a stacked uint8 batch; returns one output dict per image."""
        arrays = self.run_batched(batch, busy)
        return [{n: a[i] for n, a in arrays.items()} for i in range(len(batch))]

    def run_batched(self, batch: np.ndarray, busy: bool = False) -> dict[str, np.ndarray]:
        """Run a stacked uint8 batch; returns each output with its batch dimension. Graphs without a dynamic
        batch run image by image. `busy`: the worker has more work waiting (see runtime.create_busy_session)."""
        session = self.busy_session if busy and self.busy_session is not None else self.session
        if self.metadata.input.dynamic_batch:
            return dict(zip(self.output_names, session.run(self.output_names, {self.input_name: batch}), strict=True))
        runs = [session.run(self.output_names, {self.input_name: image[None]}) for image in batch]
        return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(self.output_names)}

    def describe(self) -> dict[str, Any]:
        data = self.metadata.model_dump(mode="json")
        data["provider"] = self.provider
        return data


def load_model(version_dir: Path, settings: Settings, *, every_batch_size: bool = False) -> LoadedModel:
    """Read, verify, create the sessions and warm them. `every_batch_size`: warm every batch size the batcher
    can form (a version loaded while serving: its first requests then meet no first-run cost at any size)."""
    started = time.perf_counter()
    model = _load_model(version_dir, settings, every_batch_size)
    model.load_seconds = time.perf_counter() - started
    return model


def _load_model(version_dir: Path, settings: Settings, every_batch_size: bool) -> LoadedModel:
    meta_path, onnx_path = version_dir / "model.json", version_dir / "model.onnx"
    if not meta_path.is_file() or not onnx_path.is_file():
        raise ModelLoadError(f"{version_dir}: needs model.json and model.onnx")
    try:
        metadata = ModelMetadata.read(meta_path)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{meta_path}: invalid model.json: {exc}") from exc
    if (metadata.name, metadata.version) != (version_dir.parent.name, version_dir.name):
        raise ModelLoadError(
            f"{meta_path}: says {metadata.name}/{metadata.version} but lives in "
            f"{version_dir.parent.name}/{version_dir.name}"
        )
    try:
        if settings.verify_sha256:
            actual = sha256_file(onnx_path)
            if actual != metadata.sha256:
                raise ModelLoadError(f"{onnx_path}: sha256 {actual} does not match model.json's {metadata.sha256}")
        task = get_task(metadata.task)
        session, provider = create_session(onnx_path, settings)
        model = LoadedModel(metadata=metadata, session=session, provider=provider, path=version_dir, task=task)
        warm_up(model, settings, every_batch_size)
        if provider == "cpu":
            model.busy_session = create_busy_session(onnx_path, settings, lone_image_seconds(model))
            if model.busy_session is not None:
                warm_up(model, settings, every_batch_size)
    except (ModelLoadError, ProviderUnavailable):
        raise  # a GPU provider asked for and missing stops start-up: no silent fallback
    except OSError as exc:
        raise ModelLoadError(f"{onnx_path}: cannot be read: {exc}") from exc
    except Exception as exc:  # ONNX Runtime refuses the graph, or it fails its warm-up run: this version only
        raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot run it: {exc}") from exc
    return model


def lone_image_seconds(model: LoadedModel) -> float:
    """The median of three runs of one image: what a request alone on the worker costs the session."""
    spec = model.metadata.input
    image = np.zeros((1, 3, spec.height, spec.width), dtype=np.uint8)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        model.run(image)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def warm_up(model: LoadedModel, settings: Settings, every_batch_size: bool = False) -> None:
    """Run a batch of one and of two (both code paths, and a dynamic N, initialised before /readyz), or of
    every size from 1 to the largest the batcher forms."""
    spec = model.metadata.input
    largest = 1 if spec.max_batch_size == 1 else min(settings.max_batch_size, spec.max_batch_size or 1 << 30)
    sizes = range(1, largest + 1) if every_batch_size else range(1, min(largest, 2) + 1)
    for _ in range(max(settings.warmup_runs, 1 if every_batch_size else 0)):
        for n in sizes:
            for busy in (False, True) if model.busy_session is not None else (False,):
                model.run(np.zeros((n, 3, spec.height, spec.width), dtype=np.uint8), busy)


def version_dirs(root: Path) -> list[Path]:
    """Every NAME/VERSION folder of a repository, in load order; hidden ones (an exporter's staging) left out."""
    return sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith("."))


class ModelRepository:
    def __init__(self, models: list[LoadedModel], failures: dict[str, str] | None = None) -> None:
        self._models: dict[str, dict[str, LoadedModel]] = {}
        for model in models:
            self._models.setdefault(model.metadata.name, {})[model.metadata.version] = model
        self.failures = failures or {}

    @classmethod
    def load(cls, settings: Settings, *, strict: bool = False, only: str | None = None) -> ModelRepository:
        """Every version, or (`only`: a model name) that model's alone, as `optic eval` needs."""
        root = settings.model_repository
        if not root.is_dir():
            raise ModelLoadError(f"model repository {root} does not exist (OPTIC_MODEL_REPOSITORY)")
        models, failures = [], {}
        for version_dir in version_dirs(root):
            if only is not None and version_dir.parent.name != only:
                continue
            try:
                models.append(load_model(version_dir, settings))
                log.info("loaded %s on %s", version_dir, models[-1].provider)
            except ModelLoadError as exc:
                if strict:
                    raise
                log.error("not serving %s: %s", version_dir, exc)
                failures[f"{version_dir.parent.name}/{version_dir.name}"] = str(exc)
        return cls(models, failures)

    def __iter__(self) -> Iterator[LoadedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def names(self) -> list[str]:
        return sorted(self._models)

    def resolve(self, name: str | None, task: str) -> LoadedModel:
        """`name`, `name:version` or None (the task's default: the first model name of that task)."""
        if not name:
            candidates = [n for n in self.names() if self._latest(n).metadata.task == task]
            if not candidates:
                raise UnknownModel(f"no {task} model is loaded", detail={"models": self.names()})
            return self._latest(candidates[0])
        base, _, version = name.partition(":")
        versions = self._models.get(base)
        if versions is None:
            raise UnknownModel(f"unknown model {base!r}", detail={"models": self.names()})
        if version and version not in versions:
            raise UnknownModel(
                f"model {base!r} has no version {version!r}", detail={"versions": sorted(versions, key=_version_key)}
            )
        model = versions[version] if version else self._latest(base)
        if model.metadata.task != task:
            raise WrongTask(f"model {model.key} is a {model.metadata.task} model, not {task}")
        return model

    def get(self, name: str) -> LoadedModel:
        """Any task: for evaluation, which accepts every task."""
        base, _, version = name.partition(":")
        versions = self._models.get(base)
        if versions is None or (version and version not in versions):
            raise UnknownModel(f"unknown model {name!r}", detail={"models": self.names()})
        return versions[version] if version else self._latest(base)

    def _latest(self, name: str) -> LoadedModel:
        versions = self._models[name]
        return versions[max(versions, key=_version_key)]
