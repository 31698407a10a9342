"""The one training loop. It never names a task: data, model, loss and metrics come from the plug-in.

`fit(cfg)` writes into `run_dir`: config.json, last.pt every epoch, best.pt on improvement, metrics.csv and
metrics.json, summary.json and the task's plots. `cfg.resume = run_dir` continues a stopped run exactly:
same epoch budget, optimizer, schedule and RNG streams.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_atomic, seed_everything
from training.config import RunConfig, TrainConfig
from training.optim import build_optimizer, build_scheduler
from training.runlog import prefixed, write_history, write_json
from training.tasks import get_task
from training.tasks.base import Evaluation, TrainTask

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(name)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path]:
    """The effective config and run folder: a new `out/name`, or the saved config of the run to resume."""
    if cfg.resume is not None:
        saved = RunConfig.load(cfg.resume / "config.json").train
        # Where to run may change between sessions; what to train may not.
        return dataclasses.replace(saved, device=cfg.device, workers=cfg.workers, resume=cfg.resume), cfg.resume
    name = cfg.name or f"{cfg.task}-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = cfg.out / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run; pick another --name or --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(cfg, run_dir=run_dir), run_dir


def make_loader(
    task: TrainTask, dataset: Dataset[Any], cfg: TrainConfig, device: torch.device, *, train: bool, seed: int
) -> DataLoader[Any]:
    # A generator seeded per (run seed, epoch) fixes shuffling and worker augmentation seeds, so an epoch
    # replays identically whether or not the run was resumed before it.
    generator = torch.Generator().manual_seed(seed)
    size = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train,
        # A last batch of one breaks BatchNorm in train mode; drop it only in that case.
        drop_last=train and size % cfg.batch_size == 1 and size > 1,
        num_workers=cfg.workers,
        collate_fn=task.collate_fn,
        pin_memory=device.type == "cuda",
        generator=generator,
    )


def train_one_epoch(
    task: TrainTask,
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    use_amp: bool,
    bar: Any,
) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    for batch in loader:
        with torch.autocast(device.type, enabled=use_amp):
            loss, logs = task.compute_loss(model, batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {steps}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        sums["loss"] += loss.item()
        for key, value in logs.items():
            sums[key] += value
        bar.update(1)
        bar.set_postfix({key: f"{value / steps:.4f}" for key, value in sums.items()}, refresh=False)
    if steps == 0:
        raise ValueError("the training split produced no batch; add images or lower --batch-size")
    return {f"train_{key}": value / steps for key, value in sums.items()}


def fit(cfg: TrainConfig, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train `cfg` (or resume `cfg.resume`) to the end and return the run folder.

    `on_epoch_end(epoch, row)` runs after each epoch's checkpoint is on disk (early stopping, tests).
    """
    cfg, run_dir = prepare_run(cfg)
    seed_everything(cfg.seed)
    task = get_task(cfg.task)
    device = resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    train_ds, val_ds, labels = task.build_datasets(cfg)
    test_ds = task.build_test_dataset(cfg, labels)
    model = task.build_model(cfg.arch, len(labels), cfg.weights, cfg.freeze_backbone).to(device)
    set_bn_momentum(model, cfg.bn_momentum)
    if cfg.resume is None:
        RunConfig(cfg, labels, task.mean, task.std).save(run_dir / "config.json")

    val_loader = make_loader(task, val_ds, cfg, device, train=False, seed=cfg.seed)
    steps_per_epoch = len(make_loader(task, train_ds, cfg, device, train=True, seed=cfg.seed))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict[str, Any]] = []
    best_metric, best_epoch, start_epoch = float("-inf"), 0, 1
    if cfg.resume is not None:
        state = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved from a CPU run
            scaler.load_state_dict(state["scaler"])
        history, best_metric, best_epoch = state["history"], state["best_metric"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        restore_rng(state["rng"])  # last: building the model above consumed random numbers
        log.info("resuming %s at epoch %d/%d", run_dir, start_epoch, cfg.epochs)

    primary = f"val_{task.primary_metric}"
    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        loader = make_loader(task, train_ds, cfg, device, train=True, seed=cfg.seed * 100_003 + epoch)
        lr = optimizer.param_groups[0]["lr"]
        with tqdm(
            total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", dynamic_ncols=True, disable=None
        ) as bar:  # None: no bar when stderr is not a terminal (CI logs)
            row: dict[str, Any] = {"epoch": epoch}
            row |= train_one_epoch(task, model, loader, optimizer, scheduler, scaler, device, use_amp, bar)
            row |= prefixed("val", task.evaluate(model, val_loader, device).metrics)
            row |= {"lr": lr, "seconds": time.perf_counter() - started}
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k in ("train_loss", primary)})
        history.append(row)
        if row[primary] > best_metric:
            best_metric, best_epoch = row[primary], epoch
            save_atomic({"model": model.state_dict(), "epoch": epoch, "metrics": row}, run_dir / "best.pt")
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "history": history,
                "rng": capture_rng(),
            },
            run_dir / "last.pt",
        )
        write_history(run_dir, history)
        log.info(
            "epoch %d/%d: %s", epoch, cfg.epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    finish_run(
        task,
        model,
        cfg,
        run_dir,
        labels,
        history,
        best_epoch,
        val_loader,
        None if test_ds is None else make_loader(task, test_ds, cfg, device, train=False, seed=cfg.seed),
        device,
    )
    return run_dir


def finish_run(
    task: TrainTask,
    model: nn.Module,
    cfg: TrainConfig,
    run_dir: Path,
    labels: list[str],
    history: list[dict[str, Any]],
    best_epoch: int,
    val_loader: DataLoader[Any],
    test_loader: DataLoader[Any] | None,
    device: torch.device,
) -> None:
    """Re-evaluate the best weights on val (and test), write summary.json and the plots."""
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    evaluations: dict[str, Evaluation] = {"val": task.evaluate(model, val_loader, device)}
    if test_loader is not None:
        evaluations["test"] = task.evaluate(model, test_loader, device)
    metrics: dict[str, float] = {}
    for split, evaluation in evaluations.items():
        metrics |= prefixed(split, evaluation.metrics)
    write_json(
        run_dir / "summary.json",
        {
            "task": cfg.task,
            "arch": cfg.arch,
            "primary_metric": task.primary_metric,
            "best_epoch": best_epoch,
            "epochs": cfg.epochs,
            "metrics": metrics,
            "best_epoch_row": next(row for row in history if row["epoch"] == best_epoch),
            "train_seconds": sum(row["seconds"] for row in history),
            "num_labels": len(labels),
        },
    )
    task.plots(run_dir, history, {split: e.details for split, e in evaluations.items()}, labels)
    log.info("best epoch %d: %s", best_epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
