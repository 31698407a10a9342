"""Named, reproducible training recipes: the exact settings behind the models committed under models/.

A recipe renders itself as the `optic` command sequence (for the Makefile and README), and tests check the
commands parse back to the same TrainConfig, so the documented commands and the recipe cannot drift.

`python -m training.recipes --print [NAME ...]` prints them; `make demo-models REPOSITORY=DIR` runs them all
on a clean checkout (no data/ or runs/ yet: demo data and runs are never overwritten, nor are published
versions, so point REPOSITORY at an empty folder to rebuild beside the committed models).

- digits -> models/digits/1 (classification, mobilenet_v3_small)
- shapes -> models/shapes/2 (detection, ssdlite320_mobilenet_v3_large)
- shape-crops: a pretraining run, not exported. A MobileNetV3 classifier of the detection demo's object crops
  whose weights start shapes-seg's backbone (from scratch, LR-ASPP learns where the objects are long before it
  learns which shape they are). It must run before shapes-seg; sorted order does that.
- shapes-seg -> models/shapes-seg/3 (semantic segmentation, lraspp_mobilenet_v3_large)
- shapes-instances -> models/shapes-instances/2 (instance segmentation, optic's slim Mask R-CNN)

Version 1 of the three shapes models were snapshots of unfinished runs. shapes/2, shapes-instances/2 and
shapes-seg/3 are their recipes run to the end (shapes-seg/2 came from a shape-crops backbone trained by older
code, which today's recipe does not reproduce).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    demo_task: str  # `optic data demo TASK` writes the data set
    data: Path
    export_name: str
    export_version: str
    # TrainConfig fields; everything else keeps the TrainConfig default.
    train: dict[str, Any] = field(default_factory=dict)
    demo_out: Path | None = None  # where the demo is written, when `data` is a folder inside it
    export: bool = True  # False: a pretraining run that another recipe's weights point at

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.train['arch']}"

    def config(self, out: Path = Path("runs")) -> TrainConfig:
        return TrainConfig(data=self.data, out=out, name=self.run_name, **self.train)

    def commands(self, out: Path = Path("runs"), repository: Path = Path("models")) -> list[list[str]]:
        """argv lists (without the leading `optic`) that reproduce the committed model."""
        train = ["train", "--data", str(self.data)]
        for key, value in self.train.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                train += [flag] if value else []
            elif isinstance(value, (tuple, list)):
                train += [flag, *(str(v) for v in value)]
            else:
                train += [flag, "none" if value is None else str(value)]
        train += ["--out", str(out), "--name", self.run_name]
        demo = ["data", "demo", self.demo_task, "--out", str(self.demo_out or self.data)]
        if not self.export:
            return [demo, train]
        return [
            demo,
            train,
            [
                "export",
                str(out / self.run_name),
                "--name",
                self.export_name,
                "--version",
                self.export_version,
                "--repository",
                str(repository),
            ],
        ]

    def shell(self, out: Path = Path("runs"), repository: Path = Path("models")) -> str:
        return "\n".join("optic " + shlex.join(argv) for argv in self.commands(out, repository))


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        name="digits",
        demo_task="classification",
        data=Path("data/demo-cls"),
        export_name="digits",
        export_version="1",
        train={
            "task": "classification",
            "arch": "mobilenet_v3_small",  # ~1 M parameters: a ~4 MB ONNX file
            "weights": None,  # from scratch: nothing to download, fully reproducible offline
            "epochs": 10,
            "batch_size": 32,  # 40 steps per epoch: enough updates on 1,259 images
            "lr": 0.003,
            # torchvision's 0.01 leaves eval-mode statistics behind in a 400-step run (val stuck at chance).
            "bn_momentum": 0.1,
            "image_size": (64, 64),  # 32 px collapses to 1x1 features after MobileNet's stride 32
            "seed": 0,
        },
    ),
    "shapes": Recipe(
        name="shapes",
        demo_task="detection",
        data=Path("data/demo-det"),
        export_name="shapes",
        export_version="2",
        train={
            "task": "detection",
            "arch": "ssdlite320_mobilenet_v3_large",  # ~2.3 M parameters: a ~9 MB ONNX file
            "weights": None,  # from scratch: simple shapes need no pretrained features
            "epochs": 20,
            "batch_size": 16,  # 20 steps per epoch over the 320 training images
            "lr": 0.003,
            "warmup_epochs": 1,
            # SSDlite's own 0.03 lags the fast-moving weights: eval-mode outputs stop depending on the image
            # (val mAP ~0 for 5 epochs while the training loss falls). 0.1 tracks them.
            "bn_momentum": 0.1,
            "image_size": (320, 320),  # the demo photos are at most 320 px: letterboxed at scale ~1
            "seed": 0,
        },
    ),
    "shape-crops": Recipe(
        name="shape-crops",
        demo_task="detection",
        demo_out=Path("data/demo-crops"),
        data=Path("data/demo-crops/crops"),  # the detection demo's objects cut out, plus background patches
        export_name="",
        export_version="",
        export=False,
        train={
            "task": "classification",
            "arch": "mobilenet_v3_large",  # the backbone of lraspp_mobilenet_v3_large
            "weights": None,
            "epochs": 30,  # ~99% val top-1 on the five classes
            "batch_size": 32,
            "lr": 0.003,
            "bn_momentum": 0.1,
            "image_size": (64, 64),
            "seed": 0,
            "workers": 1,  # worker processes draw augmentations from their own seeded streams
        },
    ),
    "shapes-seg": Recipe(
        name="shapes-seg",
        demo_task="segmentation",
        data=Path("data/demo-seg"),
        export_name="shapes-seg",
        export_version="3",
        train={
            "task": "segmentation",
            "arch": "lraspp_mobilenet_v3_large",  # ~3.2 M parameters: a ~13 MB ONNX file
            # shape-crops' classifier; the path assumes the default --out runs.
            "weights": "backbone:runs/shape-crops-mobilenet_v3_large/best.pt",
            "epochs": 60,  # 30 reached test mIoU 0.52 from a freshly rebuilt shape-crops backbone; 60 reach 0.85
            "batch_size": 8,
            "lr": 0.003,
            "bn_momentum": 0.1,
            "image_size": (160, 160),
            "seed": 0,
            "workers": 1,
        },
    ),
    "shapes-instances": Recipe(
        name="shapes-instances",
        demo_task="instance-segmentation",
        data=Path("data/demo-inst"),
        export_name="shapes-instances",
        export_version="2",
        train={
            "task": "instance-segmentation",
            # optic's slim Mask R-CNN (training.mask_rcnn): ~3.5 M parameters, a ~14.5 MB ONNX file.
            "arch": "maskrcnn_mobilenet_v3_large_fpn",
            "weights": None,  # from scratch: the RoI heads see each object whole, shapes come quickly
            "epochs": 30,
            "batch_size": 4,
            "lr": 0.002,
            "bn_momentum": 0.1,
            "image_size": (224, 224),
            "seed": 0,
            "workers": 1,
        },
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def existing_outputs(recipes: list[Recipe], out: Path, repository: Path) -> list[Path]:
    """What running `recipes` would have to overwrite: demo data folders, run folders, model versions."""
    paths = []
    for recipe in recipes:
        paths += [recipe.demo_out or recipe.data, out / recipe.run_name]
        if recipe.export:
            paths.append(repository / recipe.export_name / recipe.export_version)
    return [path for path in dict.fromkeys(paths) if path.exists() and (path.is_file() or any(path.iterdir()))]


def main(argv: list[str] | None = None) -> int:
    """`python -m training.recipes [NAME ...]`: rebuild demo models (data, train, export), or print the commands."""
    import argparse

    from training.cli import main as optic

    parser = argparse.ArgumentParser(prog="python -m training.recipes", description=main.__doc__)
    parser.add_argument("names", nargs="*", help=f"recipes (default: all of {', '.join(sorted(RECIPES))})")
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    recipes = [get_recipe(name) for name in args.names or sorted(RECIPES)]
    if not args.print_only and (taken := existing_outputs(recipes, args.out, args.repository)):
        # Checked before any work: demo data, runs and published versions are never overwritten, and finding
        # that out at an export after an hour of training helps nobody.
        print(  # noqa: T201 - a user error, one line per path
            "python -m training.recipes: these already exist; remove them or pick another --out / --repository "
            "(make demo-models REPOSITORY=DIR):\n" + "\n".join(f"  {path}" for path in taken),
            file=sys.stderr,
        )
        return 2
    for recipe in recipes:
        for command in recipe.commands(args.out, args.repository):
            print("optic " + shlex.join(command), flush=True)  # noqa: T201 - the commands are the output
            if not args.print_only and (code := optic(command)) != 0:
                return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
