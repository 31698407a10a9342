"""Evaluation's ground truth through dataformats, the readers training uses: their errors become InvalidDataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dataformats import DatasetError
from dataformats import masks as mask_files
from dataformats.evaluation import EvalDataset
from service.errors import InvalidDataset
from service.metadata import ModelMetadata

Reader = Callable[[Path, list[str]], EvalDataset]


@contextmanager
def invalid_dataset() -> Iterator[None]:
    """A data set a reader cannot read is a 422 naming the file and the problem."""
    try:
        yield
    except DatasetError as exc:
        raise InvalidDataset(exc.message, detail=exc.detail) from None


def read_ground_truth(read: Reader, root: Path, metadata: ModelMetadata) -> EvalDataset:
    """`read(root, the model's labels)`, its errors as InvalidDataset."""
    with invalid_dataset():
        return read(root, metadata.labels)


def read_mask(path: Path, image_path: Path, num_classes: int) -> np.ndarray:
    """One image's class-index mask (dataformats.masks.read_mask), its errors as InvalidDataset."""
    with invalid_dataset():
        return mask_files.read_mask(path, image_path, num_classes)
