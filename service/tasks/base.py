"""The serving side of a task plug-in: preprocess -> (session.run) -> postprocess, plus evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from dataformats.evaluation import EvalDataset, EvalItem
from service.imaging import DecodedImage, Geometry, to_model_input
from service.metadata import ModelMetadata

Outputs = dict[str, np.ndarray]  # one image's outputs, batch dimension removed


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

    def eval_info(self, dataset: EvalDataset) -> dict[str, Any]:
        """What scoring needs besides the per-image records, JSON-able: shard files carry it to the merge."""
        return {}

    @abstractmethod
    def eval_record(
        self, item: EvalItem, outputs: Outputs, result: dict[str, Any], dataset: EvalDataset, metadata: ModelMetadata
    ) -> dict[str, Any]:
        """One image's compact, JSON-able prediction with its ground truth: all that scoring needs of it."""

    @abstractmethod
    def score(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics, per-image results) from every image's record, in data set order. `metrics["summary"]`
        holds the headline floats (the last-evaluation-score gauge). One run and merged shards call it alike."""
