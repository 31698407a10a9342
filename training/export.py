"""Export a finished run to `repository/NAME/VERSION/{model.onnx,model.json}`, verified before publishing.

The graph takes uint8 pixels (normalization is inside it), has a dynamic batch dimension, and must match
PyTorch within the task's tolerance under ONNX Runtime on batches of 1 and 7 (the task's `parity_batch_sizes`);
otherwise nothing is written.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from service import __version__ as optic_version
from service.metadata import (
    InputSpec,
    ModelMetadata,
    Preprocessing,
    Provenance,
    next_version,
    sha256_file,
    write_model_version,
)
from training.checkpoint import load_checkpoint
from training.config import RunConfig
from training.runlog import read_summary
from training.tasks import get_task
from training.tasks.base import ParityError, TrainTask

log = logging.getLogger(__name__)

PARITY_BATCH_SIZES = TrainTask.parity_batch_sizes  # the default; a task may measure at other sizes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def load_trained_model(run_dir: Path) -> tuple[TrainTask, RunConfig, nn.Module]:
    """The best checkpoint rebuilt from config.json alone (no data, no pretrained download)."""
    run = RunConfig.load(run_dir / "config.json")
    task = get_task(run.train.task)
    model = task.rebuild_model(run)
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    return task, run, model.eval()


def export_graph(module: nn.Module, path: Path, task: TrainTask, size: tuple[int, int], opset: int) -> None:
    # The TorchScript exporter (dynamo=False) handles every torchvision model with truly dynamic N via
    # dynamic_axes; a batch of 2 as example keeps the tracer from specialising on N == 1.
    example = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["images"],
            output_names=list(task.export_outputs),
            dynamic_axes=task.dynamic_axes(),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"the ONNX graph keeps {len(external)} tensors in external files; export a smaller model")
    onnx.checker.check_model(proto)


def measure_parity(task: TrainTask, module: nn.Module, path: Path, images: torch.Tensor) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the first `task.parity_batch_sizes` of `images`; `task.check_parity`
    judges. With `task.parity_vs_single`, each batch must also match its images run one at a time."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = list(task.export_outputs)

    def run_onnx(batch: torch.Tensor) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"images": batch.numpy()}), strict=True))

    alone: list[dict[str, np.ndarray]] = []  # ONNX outputs of image i run by itself, filled as needed
    parity: dict[str, float] = {}
    for batch in task.parity_batch_sizes:
        with torch.no_grad():
            expected = module(images[:batch])
        expected_list = list(expected) if isinstance(expected, (tuple, list)) else [expected]
        references = {"": {n: t.numpy() for n, t in zip(names, expected_list, strict=True)}}
        if task.parity_vs_single and batch > 1:
            alone += [run_onnx(images[i : i + 1]) for i in range(len(alone), batch)]
            references["_vs_single"] = {n: np.concatenate([a[n] for a in alone[:batch]]) for n in names}
        onnx_outputs = run_onnx(images[:batch])
        for suffix, reference in references.items():
            try:
                diffs = task.check_parity(reference, onnx_outputs)
            except ParityError as exc:
                against = " against its images one at a time" if suffix else ""
                raise ParityError(f"batch of {batch}{against}: {exc}") from None
            for output, diff in diffs.items():
                key = f"max_abs_diff_batch{batch}" if len(diffs) == 1 else f"{output}_max_abs_diff_batch{batch}"
                if output not in names:  # a task's own measure (a mismatch share, a count), named as such
                    key = f"{output}_batch{batch}"
                parity[key + suffix] = diff
    return parity


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_metadata(
    name: str,
    version: str,
    task: TrainTask,
    run: RunConfig,
    run_dir: Path,
    opset: int,
    summary: dict[str, Any],
    parity: dict[str, float],
    sha256: str,
    preprocessing: Preprocessing | None = None,
) -> ModelMetadata:
    train = run.train
    return ModelMetadata(
        name=name,
        version=version,
        task=task.name,  # pydantic validates the name
        labels=run.labels,
        input=InputSpec(name="images", height=train.height, width=train.width, dynamic_batch=True),
        preprocessing=preprocessing
        or Preprocessing(resize="stretch", interpolation="bilinear", mean=run.mean, std=run.std, in_graph=True),
        outputs=list(task.export_outputs),
        opset=opset,
        params=task.metadata_params(train),
        metrics={k: float(v) for k, v in summary["metrics"].items()},
        parity=parity,
        sha256=sha256,
        provenance=Provenance(
            run_dir=str(run_dir),
            arch=train.arch,
            weights=train.weights or "none",
            data=str(train.data),
            epochs=train.epochs,
            best_epoch=int(summary["best_epoch"]),
            git_commit=_git_commit(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            optic_version=optic_version,
            torch_version=torch.__version__,
            torchvision_version=torchvision.__version__,
            onnx_version=onnx.__version__,
            onnxruntime_version=ort.__version__,
        ),
    )


def export_onnx(
    run_dir: Path, name: str, version: str | None = None, repository: Path = Path("models"), opset: int = 17
) -> Path:
    """Export `run_dir`'s best checkpoint as `repository/name/version/`; returns that folder.

    Raises FileExistsError for an existing version (versions are immutable) and ParityError when ONNX
    Runtime disagrees with PyTorch; in both cases nothing is written.
    """
    run_dir, repository = Path(run_dir), Path(repository)
    version = version or next_version(repository, name)
    for label, value in (("name", name), ("version", version)):
        if not _NAME.fullmatch(value):
            raise ValueError(f"model {label} {value!r} must match {_NAME.pattern}")
    if (repository / name / version).exists():
        raise FileExistsError(f"{repository / name / version} already exists; versions are immutable")
    summary = read_summary(run_dir)
    task, run, model = load_trained_model(run_dir)
    module = task.export_module(model, run).eval()
    size = run.train.image_size
    with tempfile.TemporaryDirectory(prefix="optic-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        images = task.parity_images(run, size)
        task.export_graph(module, images, onnx_path, opset)
        parity = measure_parity(task, module, onnx_path, images)
        preprocessing = task.preprocessing(run, model)
        sha256 = sha256_file(onnx_path)
        metadata = build_metadata(name, version, task, run, run_dir, opset, summary, parity, sha256, preprocessing)
        target = write_model_version(repository, metadata, onnx_path)
    log.info(
        "exported %s (%.1f MB, parity %s) to %s", run_dir, (target / "model.onnx").stat().st_size / 1e6, parity, target
    )
    return target
