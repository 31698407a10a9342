"""ONNX export: published files, model.json, dynamic batch in ONNX Runtime, immutability, parity guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.metadata import ModelMetadata, sha256_file
from training.cli import main
from training.config import TrainConfig
from training.engine import fit
from training.export import export_onnx, next_version
from training.tasks.base import ParityError
from training.tasks.classification import ClassificationTask


@pytest.fixture(scope="module")
def run_dir(cls_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(
        data=cls_data,
        arch="mobilenet_v3_small",
        epochs=1,
        batch_size=16,
        image_size=(32, 32),
        max_samples=32,
        out=tmp_path_factory.mktemp("runs"),
        name="tiny",
        device="cpu",
    )
    return fit(cfg)


def test_export_publishes_a_verified_version(run_dir: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    target = export_onnx(run_dir, "digits", repository=repository)
    assert target == repository / "digits" / "1"
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.onnx"]

    meta = ModelMetadata.read(target / "model.json")
    assert meta.sha256 == sha256_file(target / "model.onnx")
    assert meta.task == "classification" and meta.labels == [str(d) for d in range(10)]
    assert (meta.input.height, meta.input.width, meta.input.dynamic_batch) == (32, 32, True)
    assert meta.preprocessing.in_graph and meta.preprocessing.resize == "stretch"
    assert meta.outputs == ["probabilities"] and meta.opset == 17
    assert {"val_top1", "test_top1"} <= set(meta.metrics)
    assert set(meta.parity) == {"max_abs_diff_batch1", "max_abs_diff_batch7"}
    assert max(meta.parity.values()) <= 1e-4
    assert meta.provenance.arch == "mobilenet_v3_small" and meta.provenance.best_epoch == 1
    assert meta.provenance.created_at and meta.provenance.torch_version

    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        (probabilities,) = session.run(["probabilities"], {"images": images})
        assert probabilities.shape == (batch, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    with pytest.raises(FileExistsError):
        export_onnx(run_dir, "digits", version="1", repository=repository)
    assert next_version(repository, "digits") == "2"


def test_failed_parity_writes_nothing(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ClassificationTask, "parity_atol", -1.0)  # no graph can pass: the guard must fire
    with pytest.raises(ParityError, match="max abs diff"):
        export_onnx(run_dir, "digits", version="9", repository=tmp_path / "models")
    assert not (tmp_path / "models").exists()  # no version, no staging folder, nothing


def test_cli_export_and_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "repo"
    assert main(["export", str(run_dir), "--name", "cli", "--version", "3", "--repository", str(repository)]) == 0
    assert str(repository / "cli" / "3") in capsys.readouterr().out
    assert main(["export", str(run_dir), "--name", "cli", "--version", "3", "--repository", str(repository)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--name", "x", "--repository", str(repository)]) == 1
