"""The serving side of a task plug-in: preprocess -> (session.run) -> postprocess, plus evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from service.imaging import DecodedImage, Geometry, to_model_input
from service.metadata import ModelMetadata

Outputs = dict[str, np.ndarray]  # one image's outputs, batch dimension removed


@dataclass
class EvalItem:
    path: Path
    target: Any  # task-specific ground truth


@dataclass
class EvalDataset:
    items: list[EvalItem]
    info: dict[str, Any]


class ServeTask(ABC):
    """One task's hooks. Endpoints stay thin: validate, call the pipeline, record metrics."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    # True where postprocess() costs less than handing it to a thread (no per-pixel work).
    inline_postprocess: ClassVar[bool] = True

    def default_params(self, metadata: ModelMetadata) -> BaseModel:
        return self.params_model()

    def check_params(self, params: Any, metadata: ModelMetadata) -> None:  # noqa: B027 (a hook: most tasks need none)
        """Refuse, before any work, parameters that only make sense against the model (e.g. class names)."""

    def preprocess(self, image: DecodedImage, metadata: ModelMetadata) -> tuple[np.ndarray, Geometry]:
        return to_model_input(image, metadata.input, metadata.preprocessing)

    @abstractmethod
    def postprocess(self, outputs: Outputs, geometry: Geometry, metadata: ModelMetadata, params: Any) -> dict[str, Any]:
        """Turn one image's raw outputs into its JSON result."""

    def tensor_outputs(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry] | None, metadata: ModelMetadata
    ) -> dict[str, np.ndarray]:
        """The v2 protocol's output tensors for a batch: the graph's own outputs. `geometries` is set for the
        encoded-image view: a task whose outputs hold model-input pixels maps them to each image's own."""
        return outputs

    # Evaluation: the same code runs behind POST /evaluate and `optic eval`.
    @abstractmethod
    def load_eval_dataset(self, root: Path, metadata: ModelMetadata) -> EvalDataset:
        """Read ground truth from an extracted data set; raise InvalidDataset naming the problem."""

    @abstractmethod
    def eval_params(self, metadata: ModelMetadata) -> Any:
        """Parameters for predictions made for evaluation (e.g. every class, a low score threshold)."""

    @abstractmethod
    def compute_metrics(
        self, dataset: EvalDataset, outputs: list[Outputs], results: list[dict[str, Any]], metadata: ModelMetadata
    ) -> dict[str, Any]:
        """Metrics from ground truth and each image's raw outputs and result; `summary` holds the
        headline floats (exported as the last-evaluation-score gauge)."""
