"""The typed training configuration and the run record written next to the checkpoints."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "step", "none"]
Device = Literal["auto", "cpu", "cuda"]
Augment = Literal["none", "light"]

_PATH_FIELDS = ("data", "out", "run_dir", "resume")


@dataclass
class TrainConfig:
    task: str = "classification"
    data: Path = Path("data")
    arch: str = "mobilenet_v3_small"
    # None trains from scratch; otherwise a torchvision weights name or a local file (see training.weights).
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    # AdamW's decoupled decay; 0.05 is the torchvision/timm default for small-data fine-tuning.
    weight_decay: float = 0.05
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # SGD only
    scheduler: Scheduler = "cosine"
    # A short linear warm-up keeps BatchNorm statistics sane when training from scratch at a high lr.
    warmup_epochs: int = 1
    step_size_epochs: int = 10  # step schedule only: lr x gamma every this many epochs
    gamma: float = 0.1
    # BatchNorm running-stat momentum; None keeps the architecture's. MobileNet/EfficientNet use 0.01, tuned
    # for ImageNet's ~500k steps: a few hundred steps from scratch leave eval-mode statistics far behind.
    bn_momentum: float | None = None
    image_size: tuple[int, int] = (64, 64)  # (height, width), the exported graph's fixed input size
    augment: Augment = "light"
    freeze_backbone: bool = False
    val_fraction: float = 0.15  # only used when the data has no val/ folder
    # Caps every split at this many images (a stratified prefix); for smoke runs and tests.
    max_samples: int | None = None
    seed: int = 0
    workers: int = 0
    device: Device = "auto"
    amp: bool = True  # mixed precision; only ever enabled on CUDA
    out: Path = Path("runs")
    name: str | None = None
    run_dir: Path | None = None  # resolved by the engine: out/name
    resume: Path | None = None

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.weights is not None and self.weights.strip().lower() in ("", "none", "scratch"):
            self.weights = None  # one spelling of "from scratch" in config.json and model.json
        size = tuple(int(v) for v in self.image_size)
        if len(size) == 1:
            size = (size[0], size[0])
        self.image_size = (size[0], size[1])
        self.validate()

    def validate(self) -> None:
        """Refuse values that would only fail (or silently misbehave) minutes into a run."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (min(self.image_size) >= 16, f"image_size must be at least 16x16, got {self.image_size}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.bn_momentum is None or 0 < self.bn_momentum <= 1, "bn_momentum must be in (0, 1]"),
            (self.max_samples is None or self.max_samples >= 1, "max_samples must be >= 1"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {self.optimizer!r}"),
            (self.scheduler in ("cosine", "step", "none"), f"unknown scheduler {self.scheduler!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.augment in ("none", "light"), f"augment must be none or light, got {self.augment!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in _PATH_FIELDS:
            if data[name] is not None:
                data[name] = str(data[name])
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class RunConfig:
    """`run_dir/config.json`: everything export needs to rebuild the model without the data."""

    train: TrainConfig
    labels: list[str]
    mean: tuple[float, float, float]  # 0..1 units, applied after dividing uint8 pixels by 255
    std: tuple[float, float, float]
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific, e.g. anchor sizes later

    def save(self, path: Path) -> None:
        payload = {
            "train": self.train.to_dict(),
            "task": self.train.task,
            "arch": self.train.arch,
            "weights": self.train.weights,
            "input": {"height": self.train.height, "width": self.train.width},
            "labels": self.labels,
            "mean": list(self.mean),
            "std": list(self.std),
            "extra": self.extra,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        payload = json.loads(path.read_text())
        mean, std = payload["mean"], payload["std"]
        return cls(
            train=TrainConfig.from_dict(payload["train"]),
            labels=list(payload["labels"]),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            extra=dict(payload.get("extra", {})),
        )
