"""Image-folder classification data: `root/{train,val,test}/<class>/*` (Roboflow's folder export names val
`valid/`), or one folder of class folders. Labels are the sorted class folder names of the train split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataformats.errors import DatasetError
from dataformats.evaluation import EvalDataset, EvalItem
from dataformats.images import IMAGE_SUFFIXES, is_image
from dataformats.splits import find_split_root, split_folder

Sample = tuple[Path, int]  # (image path, label index)


@dataclass
class ImageFolderSplits:
    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None


def list_classes(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder} has no class sub-folders (expected {folder}/<class name>/<image>)")
    return classes


def scan_split(folder: Path, labels: Sequence[str]) -> list[Sample]:
    """Every image under `folder/<class>/`; a class folder not in `labels` is an error, not a silent skip."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(list_classes(folder)) - set(index))
    if unknown:
        raise DatasetError(f"{folder} has classes {unknown} that the train split does not have")
    samples = [
        (path, index[path.parent.name])
        for label in labels
        if (folder / label).is_dir()
        for path in sorted((folder / label).iterdir())
        if is_image(path)
    ]
    if not samples:
        raise DatasetError(f"{folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return samples


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/val split: each class with >= 2 images gives at least one to val."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_label):
        members = list(by_label[label])
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def find_splits(root: Path, val_fraction: float = 0.15, seed: int = 0) -> ImageFolderSplits:
    """Labels are the sorted class folder names of the train split (of `root` when it has no train/)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    train_dir = split_folder(root, "train")
    if train_dir is not None:
        labels = list_classes(train_dir)
        train = scan_split(train_dir, labels)
        val_dir, test_dir = split_folder(root, "val"), split_folder(root, "test")
        if val_dir is not None:
            val = scan_split(val_dir, labels)
        else:
            train, val = split_samples(train, val_fraction, seed)
        test = scan_split(test_dir, labels) if test_dir is not None else None
        return ImageFolderSplits(labels, train, val, test)
    labels = list_classes(root)
    train, val = split_samples(scan_split(root, labels), val_fraction, seed)
    return ImageFolderSplits(labels, train, val, None)


def limit_samples(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` samples, taken round-robin over classes so a small cap still covers every class."""
    if limit is None or len(samples) <= limit:
        return samples
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    queues = [by_label[label] for label in sorted(by_label)]
    picked: list[Sample] = []
    for rank in range(max(len(q) for q in queues)):
        picked.extend(q[rank] for q in queues if rank < len(q))
    return sorted(picked[:limit])


def load_folder_dataset(root: Path, labels: list[str]) -> EvalDataset:
    """Evaluation's ground truth: the class folders of the test split (else val, else `root`), below wrapper
    folders; every class folder must be among `labels`."""
    split = find_split_root(root)
    class_dirs = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            "the archive holds no class folders (expected an image-folder tree: "
            "CLASS/IMAGE files, optionally under test/ or val/)"
        )
    index = {label: i for i, label in enumerate(labels)}
    unknown = [d.name for d in class_dirs if d.name not in index]
    if unknown:
        raise DatasetError(
            f"class folders not among the model's labels: {', '.join(unknown[:10])}", detail={"model_labels": labels}
        )
    items = [
        EvalItem(path=f, target=index[d.name])
        for d in class_dirs
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DatasetError("the archive's class folders hold no images")
    return EvalDataset(items=items, info={"split": split.name})
