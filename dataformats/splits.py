"""Split names as the tools write them: Roboflow's `valid/`, COCO's `instances_val2017.json`, CVAT's
`instances_Train.json`. Every reader maps them onto optic's three: train, val, test."""

from __future__ import annotations

import re
from pathlib import Path

SPLITS = ("train", "val", "test")
EVAL_ORDER = ("test", "val", "train")  # the split evaluation reads, in order of preference
ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
_TOKEN = re.compile(r"^(?P<name>[a-z]+?)(?:\d+)?$")  # "val2017" is val


def split_of_name(name: str) -> str | None:
    """The split a file or folder name says, from its words: `valid` and `instances_val2017` are val."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        match = _TOKEN.match(word)
        if match is None:
            continue
        for split, names in ALIASES.items():
            if match["name"] in names:
                return split
    return None


def split_of_path(path: Path, root: Path) -> str | None:
    """The split of a file under `root`: its own name's, else the nearest folder's that names one."""
    relative = path.relative_to(root)
    for part in (relative.stem, *reversed(relative.parts[:-1])):
        split = split_of_name(part)
        if split is not None:
            return split
    return None


def split_folder(root: Path, split: str) -> Path | None:
    """`root/train`, `root/val` (or `valid`, `validation`), `root/test`, where present."""
    for name in ALIASES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def find_split_root(root: Path) -> Path:
    """The folder evaluation reads: test/, else val/ (valid/, validation/), else `root` itself, below wrapper
    folders. A lone folder is a wrapper only when it holds folders alone: a lone class folder holds images."""
    while True:
        for split in ("test", "val"):
            folder = split_folder(root, split)
            if folder is not None:
                return folder
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
            root = entries[0]
            continue
        return root
