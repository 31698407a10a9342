"""The task-agnostic loop: run folder contents, exact resume, config and registry errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import RunConfig, TrainConfig
from training.engine import fit
from training.optim import lr_factor
from training.tasks import get_task, list_tasks


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_cfg(cls_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    return TrainConfig(
        data=cls_data,
        arch="mobilenet_v3_small",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        bn_momentum=0.1,
        image_size=(32, 32),
        max_samples=32,
        out=tmp_path_factory.mktemp("runs"),
        device="cpu",
    )


def test_fit_writes_the_run_folder(tiny_cfg: TrainConfig) -> None:
    run_dir = fit(replace(tiny_cfg, epochs=1, name="one"))
    for name in (
        "config.json",
        "last.pt",
        "best.pt",
        "metrics.csv",
        "metrics.json",
        "summary.json",
        "loss.png",
        "accuracy.png",
        "confusion_val.png",
        "confusion_test.png",
    ):
        assert (run_dir / name).is_file(), name
    run = RunConfig.load(run_dir / "config.json")
    assert run.labels == [str(d) for d in range(10)] and run.train.image_size == (32, 32)
    assert run.mean == (0.485, 0.456, 0.406)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == 1
    assert {"val_top1", "test_top1", "val_loss"} <= set(summary["metrics"])
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1] and {"train_loss", "val_top1", "lr", "seconds"} <= set(rows[0])
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    with pytest.raises(FileExistsError, match="resume"):
        fit(replace(tiny_cfg, epochs=1, name="one"))


def test_resume_continues_exactly(tiny_cfg: TrainConfig) -> None:
    def stop_after_first(epoch: int, row: dict[str, object]) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(replace(tiny_cfg, name="interrupted"), on_epoch_end=stop_after_first)
    interrupted = tiny_cfg.out / "interrupted"
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 1
    assert not (interrupted / "summary.json").exists()

    resumed = fit(TrainConfig(resume=interrupted, device="cpu"))
    straight = fit(replace(tiny_cfg, name="straight"))
    resumed_rows = json.loads((resumed / "metrics.json").read_text())
    straight_rows = json.loads((straight / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed_rows] == [1, 2]
    for ours, theirs in zip(resumed_rows, straight_rows, strict=True):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    a, b = load_checkpoint(resumed / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * 2  # 32 images / 16 per batch
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_config_validation_and_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(data=tmp_path, image_size=(48,), weights="IMAGENET1K_V1")  # type: ignore[arg-type]
    assert cfg.image_size == (48, 48)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"val_fraction": 1.0}, {"optimizer": "adam"}, {"image_size": (8, 8)}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochz": 3})


def test_task_registry_fails_loudly() -> None:
    assert get_task("classification").primary_metric == "top1"
    with pytest.raises(KeyError, match="classification"):
        get_task("pose-estimation")
    assert "classification" in list_tasks()


def test_schedule_warms_up_then_decays() -> None:
    factor = lr_factor(TrainConfig(epochs=4, warmup_epochs=1), steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(39) < 0.01
    step = lr_factor(TrainConfig(epochs=4, warmup_epochs=0, scheduler="step", step_size_epochs=2), 10)
    assert step(19) == 1.0 and step(20) == pytest.approx(0.1)
