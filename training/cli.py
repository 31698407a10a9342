"""`optic data|train|export`: argument parsing only; the work is in training.{data.demo,engine,export}.

torch is imported inside the command functions so that `optic --help` and the serving commands stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("optic")

# Fields `--resume` may change: where the run executes, never what it trains.
_RESUME_OVERRIDES = {"device", "workers"}
# CLI flag (argparse dest) -> TrainConfig field, for the flags whose names differ.
_TRAIN_FIELDS = {
    "task": "task",
    "data": "data",
    "arch": "arch",
    "weights": "weights",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "optimizer": "optimizer",
    "scheduler": "scheduler",
    "warmup_epochs": "warmup_epochs",
    "bn_momentum": "bn_momentum",
    "image_size": "image_size",
    "augment": "augment",
    "freeze_backbone": "freeze_backbone",
    "val_fraction": "val_fraction",
    "max_samples": "max_samples",
    "seed": "seed",
    "workers": "workers",
    "device": "device",
    "amp": "amp",
    "out": "out",
    "name": "name",
}


def _cmd_data_demo(args: argparse.Namespace) -> int:
    from training.data.demo import write_demo

    print(write_demo(args.task, args.out, seed=args.seed))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.engine import fit

    given = {field: getattr(args, dest) for dest, field in _TRAIN_FIELDS.items() if getattr(args, dest) is not None}
    if args.resume is not None:
        ignored = sorted(set(given) - _RESUME_OVERRIDES)
        if ignored:
            raise ValueError(
                f"--resume trains with the run's saved config; drop {', '.join(ignored)} "
                f"(only {', '.join(sorted(_RESUME_OVERRIDES))} may change)"
            )
        cfg = TrainConfig(**given, resume=args.resume)
    else:
        if "data" not in given:
            raise ValueError("train needs --data DIR (or --resume RUN_DIR)")
        cfg = TrainConfig(**given)
    print(fit(cfg))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_onnx

    print(export_onnx(args.run_dir, args.name, version=args.version, repository=args.repository, opset=args.opset))
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a torchvision model on a data folder")
    p.set_defaults(func=_cmd_train)
    # Defaults are None: TrainConfig holds the one set of defaults (and their reasons).
    p.add_argument("--task", help="task plug-in (default classification)")
    p.add_argument(
        "--data",
        type=Path,
        help="data folder (classification: train/ val/ [test/] of class folders; detection: "
        "{train,val,test}/annotations.json (COCO), a YOLO data.yaml, or {train,val,test}/images+labels; "
        "segmentation: {train,val,test}/images+masks with classes.txt, or COCO polygons/RLE; "
        "instance-segmentation: COCO polygons/RLE)",
    )
    p.add_argument("--arch", help="torchvision architecture, e.g. mobilenet_v3_small, ssdlite320_mobilenet_v3_large")
    p.add_argument(
        "--weights",
        help="none, a torchvision weights name (IMAGENET1K_V1, DEFAULT, ...) or a file; detection and "
        "segmentation also take backbone:NAME|FILE (classifier weights for the backbone only)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--scheduler", choices=["cosine", "step", "none"])
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--bn-momentum", type=float, help="BatchNorm momentum override (0.1 helps from-scratch runs)")
    p.add_argument("--image-size", type=int, nargs="+", metavar=("H", "W"), help="input size; W defaults to H")
    p.add_argument("--augment", choices=["none", "light"])
    p.add_argument("--freeze-backbone", action="store_true", default=None)
    p.add_argument("--val-fraction", type=float, help="val share when the data has no val/ folder")
    p.add_argument("--max-samples", type=int, help="cap every split (smoke runs)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no mixed precision on CUDA")
    p.add_argument("--out", type=Path, help="parent folder of runs (default runs/)")
    p.add_argument("--name", help="run folder name (default TASK-ARCH-TIMESTAMP)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading processes (default 0: in-process)")


def add_subcommands(subparsers: Any) -> None:
    """Register `data`, `train` and `export` on an argparse subparsers object; each sets `func`."""
    data = subparsers.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    demo = data_sub.add_parser("demo", help="write a small offline demo data set for a task")
    demo.add_argument("task", help="classification, detection, segmentation or instance-segmentation")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_data_demo)

    _add_train(subparsers)

    export = subparsers.add_parser("export", help="export a run to the model repository as ONNX + model.json")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--name", required=True, help="model name in the repository")
    export.add_argument("--version", help="default: one more than the largest numeric version")
    export.add_argument("--repository", type=Path, default=Path("models"))
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optic", description="optic training commands")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; user errors become one line on stderr and exit status 1, not a traceback."""
    from training.tasks.base import ParityError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except (OSError, KeyError, ValueError, ParityError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"optic {args.command}: error: {message}", file=sys.stderr)
        return 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and args.image_size is not None and len(args.image_size) > 2:
        print("optic train: error: --image-size takes H or H W", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
