"""Demo data writer, image-folder reader and augmentation presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataformats.folders import find_splits, limit_samples
from training.data.demo import list_demos, stratified_split, write_demo
from training.data.imagefolder import ImageFolderDataset, load_image
from training.data.presets import ClassificationTrainPreset


@pytest.fixture(scope="module")
def digits(cls_data: Path) -> Path:
    """The session's demo classification tree (tests/conftest.py), read-only."""
    return cls_data


def _write_classes(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (i * 10 % 256, len(label) * 40, 0)).save(root / label / f"{i}.png")


def test_demo_classification_tree(digits: Path) -> None:
    counts = {split: len(list((digits / split).rglob("*.png"))) for split in ("train", "val", "test")}
    assert sum(counts.values()) == 1797
    assert 0.68 < counts["train"] / 1797 < 0.72 and 0.13 < counts["val"] / 1797 < 0.17
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (digits / split).iterdir()) == [str(d) for d in range(10)]
    with Image.open(next((digits / "test" / "3").iterdir())) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    # Stratified: every class is in every split in about the same share.
    for label in range(10):
        assert len(list((digits / "val" / str(label)).iterdir())) >= 25


def test_demo_splits_are_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(4), 20)
    first = stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    assert stratified_split(labels, (0.7, 0.15, 0.15), seed=3)[1].tolist() == first[1].tolist()
    together = np.concatenate(first)
    assert sorted(together.tolist()) == list(range(80))


def test_demo_refuses_unknown_task_and_non_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="classification"):
        write_demo("no-such-task", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_demo("classification", tmp_path / "busy")
    assert "classification" in list_demos()


def test_reader_uses_train_val_test_folders(digits: Path) -> None:
    splits = find_splits(digits)
    assert splits.labels == [str(d) for d in range(10)]
    assert splits.test is not None and len(splits.test) == len(list((digits / "test").rglob("*.png")))
    assert len(splits.val) == len(list((digits / "val").rglob("*.png")))
    dataset = ImageFolderDataset(limit_samples(splits.train, 20), (24, 16))
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 16)
    assert 0 <= label < 10
    assert sorted({s[1] for s in limit_samples(splits.train, 20)}) == list(range(10))


def test_reader_splits_a_single_folder_stratified(tmp_path: Path) -> None:
    _write_classes(tmp_path, {"cat": 10, "dog": 20, "owl": 3})
    splits = find_splits(tmp_path, val_fraction=0.2, seed=7)
    assert splits.labels == ["cat", "dog", "owl"] and splits.test is None
    assert not set(splits.train) & set(splits.val)
    assert len(splits.train) + len(splits.val) == 33
    val_per_class = {label: sum(1 for _, y in splits.val if y == label) for label in range(3)}
    assert val_per_class == {0: 2, 1: 4, 2: 1}
    assert find_splits(tmp_path, val_fraction=0.2, seed=7).val == splits.val


def test_reader_rejects_val_classes_missing_from_train(tmp_path: Path) -> None:
    _write_classes(tmp_path / "train", {"a": 2, "b": 2})
    _write_classes(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match="zebra"):
        find_splits(tmp_path)


def test_loader_matches_the_service_preprocessing(tmp_path: Path) -> None:
    """Train/serve skew guard: the same file must become the same uint8 tensor on both sides."""
    imaging = pytest.importorskip("service.imaging")
    from service.metadata import InputSpec, Preprocessing

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    spec = InputSpec(height=20, width=28)
    for path in (tmp_path / "gray.png", tmp_path / "photo.jpg"):
        ours = load_image(path, (spec.height, spec.width)).numpy()
        # The service's pipeline decodes with a draft size equal to the input size (JPEG DCT scaling).
        decoded = imaging.decode_image(
            path.read_bytes(), filename=path.name, max_pixels=10**6, draft_size=(spec.width, spec.height)
        )
        theirs, _ = imaging.to_model_input(decoded, spec, Preprocessing())
        np.testing.assert_array_equal(ours, theirs, err_msg=path.name)


def test_light_preset_keeps_shape_and_none_is_identity() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = ClassificationTrainPreset("light")(image)
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert torch.equal(ClassificationTrainPreset("none")(image), image)
    with pytest.raises(ValueError, match="light"):
        ClassificationTrainPreset("flip")
