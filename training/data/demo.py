"""Small, offline demo data sets, one writer per task, so every task can be trained end to end in minutes.

Nothing is downloaded: classification uses scikit-learn's bundled `load_digits`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

DemoWriter = Callable[[Path, int], dict[str, int]]
_WRITERS: dict[str, DemoWriter] = {}
# Writers in their own modules (heavier imports), registered when first needed.
_MODULES = ("training.data.demo_detection", "training.data.demo_segmentation")


def register_demo(task: str) -> Callable[[DemoWriter], DemoWriter]:
    def decorator(writer: DemoWriter) -> DemoWriter:
        _WRITERS[task] = writer
        return writer

    return decorator


def list_demos() -> list[str]:
    for module in _MODULES:
        importlib.import_module(module)
    return sorted(_WRITERS)


def write_demo(task: str, out: Path, seed: int = 0) -> Path:
    """Write the demo data set for `task` under `out`; refuses a non-empty `out` so splits never mix."""
    if task not in list_demos():
        raise KeyError(f"no demo data for task {task!r}; known: {', '.join(list_demos())}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; remove it or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    counts = _WRITERS[task](out, seed)
    log.info("wrote %s demo data to %s: %s", task, out, counts)
    return out


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices per split, each class divided in the same proportions (rounding goes to the first split)."""
    rng = np.random.default_rng(seed)
    splits: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        sizes = [round(len(members) * f) for f in fractions[1:]]
        bounds = np.cumsum([len(members) - sum(sizes), *sizes])
        for split, part in zip(splits, np.split(members, bounds[:-1]), strict=True):
            split.extend(int(i) for i in part)
    return [np.sort(np.asarray(split, dtype=np.int64)) for split in splits]


@register_demo("classification")
def _write_digits(out: Path, seed: int) -> dict[str, int]:
    """sklearn digits (8x8, values 0..16) as a 32x32 RGB image-folder tree: white digits on black."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    counts: dict[str, int] = {}
    for split, indices in zip(
        ("train", "val", "test"), stratified_split(labels, (0.70, 0.15, 0.15), seed), strict=True
    ):
        for index in indices:
            folder = out / split / str(labels[index])
            folder.mkdir(parents=True, exist_ok=True)
            # Bilinear upscaling gives smooth strokes, closer to what a camera would deliver than blocks.
            image = Image.fromarray(pixels[index], mode="L").resize((32, 32), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{index:04d}.png")
        counts[split] = len(indices)
    return counts
