"""The training CLI parses into the same config as the library, and refuses bad invocations in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import cli
from training.config import TrainConfig
from training.recipes import get_recipe


def _parsed_config(argv: list[str]) -> TrainConfig:
    args = cli.build_parser().parse_args(argv)
    given = {f: getattr(args, d) for d, f in cli._TRAIN_FIELDS.items() if getattr(args, d) is not None}
    return TrainConfig(**given)


def test_digits_recipe_commands_parse_to_the_recipe_config() -> None:
    recipe = get_recipe("digits")
    demo, train, export = recipe.commands()
    assert demo == ["data", "demo", "classification", "--out", "data/demo-cls"]
    assert _parsed_config(train) == recipe.config()
    assert export[:2] == ["export", "runs/digits-mobilenet_v3_small"] and "--version" in export
    assert recipe.shell().startswith("optic data demo classification")
    with pytest.raises(KeyError, match="digits"):
        get_recipe("imagenet")


def test_train_flags_map_onto_train_config() -> None:
    cfg = _parsed_config(
        [
            "train",
            "--data",
            "d",
            "--arch",
            "resnet18",
            "--image-size",
            "48",
            "--freeze-backbone",
            "--no-amp",
            "--batch-size",
            "8",
            "--weights",
            "DEFAULT",
        ]
    )
    assert cfg.image_size == (48, 48) and cfg.freeze_backbone and not cfg.amp and cfg.batch_size == 8
    assert cfg.weights == "DEFAULT" and cfg.data == Path("d")


def test_user_errors_are_one_line_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--arch", "resnet18"]) == 1
    assert "--data" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 1
    assert "epochs" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path), "--image-size", "1", "2", "3"]) == 2
    assert cli.main(["data", "demo", "pose", "--out", str(tmp_path / "x")]) == 1
    assert "classification" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "runs")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_recipes_refuse_to_start_over_existing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every output is checked before any work: no demo data is written, nothing trains."""
    import os

    from training import recipes

    published = tmp_path / "models" / "digits" / "1"
    published.mkdir(parents=True)
    (published / "model.json").write_text("{}")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert recipes.main(["digits", "--repository", "models", "--out", "runs"]) == 2
        assert recipes.existing_outputs([recipes.get_recipe("digits")], Path("runs"), Path("elsewhere")) == []
    finally:
        os.chdir(cwd)
    assert "models/digits/1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no data/, no runs/
