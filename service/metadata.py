"""`model.json`: the one schema that export writes and the service reads.

Preprocessing travels with the weights: the service never hardcodes a size, a mean or a label list.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
TASKS = ("classification", "detection", "segmentation", "instance-segmentation")
TaskName = Literal["classification", "detection", "segmentation", "instance-segmentation"]


class InputSpec(BaseModel):
    """The graph's image input: uint8 RGB, NCHW, at a fixed height and width."""

    name: str = "images"
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NCHW"] = "NCHW"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dynamic_batch: bool = True
    # Set only when the graph cannot take a dynamic N (the batcher then runs items one by one).
    max_batch_size: int | None = None


class Preprocessing(BaseModel):
    """How an image becomes the graph's input. Normalization is inside the graph when `in_graph`."""

    resize: Literal["stretch", "letterbox"] = "stretch"
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    color: Literal["RGB"] = "RGB"
    pad_value: int = 114
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    in_graph: bool = True


class Provenance(BaseModel):
    """Where the model came from: train-to-serve lineage."""

    model_config = ConfigDict(extra="allow")

    run_dir: str | None = None
    arch: str | None = None
    weights: str | None = None
    data: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    git_commit: str | None = None
    created_at: str | None = None
    optic_version: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    onnx_version: str | None = None


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: TaskName
    labels: list[str] = Field(min_length=1)
    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    outputs: list[str]
    opset: int
    # Task parameters fixed at export (score threshold, max detections, ...).
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    parity: dict[str, float] = Field(default_factory=dict)
    sha256: str
    provenance: Provenance = Provenance()

    @classmethod
    def read(cls, path: Path) -> ModelMetadata:
        return cls.model_validate_json(path.read_text())

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def next_version(repository: Path, name: str) -> str:
    """One more than the largest numeric version folder of `name` ("1" for a new model)."""
    folder = repository / name
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return str(max(numbers, default=0) + 1)


def write_model_version(repository: Path, metadata: ModelMetadata, onnx_path: Path) -> Path:
    """Publish `repository/NAME/VERSION/` atomically; never overwrite an existing version.

    The files are written to a temporary sibling folder which is then renamed into place; `os.rename`
    of a folder onto an existing non-empty folder fails, so two exporters cannot both win.
    """
    model_dir = repository / metadata.name
    target = model_dir / metadata.version
    if target.exists():
        raise FileExistsError(f"{target} already exists; versions are immutable, pick another --version")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{metadata.version}.", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a model repository is read by other users
    try:
        shutil.copyfile(onnx_path, staging / "model.onnx")
        (staging / "model.json").write_text(metadata.dumps())
        for path in (staging / "model.onnx", staging / "model.json"):
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, target)
    except BaseException:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
        raise
    return target
