"""`optic eval --shard I/N --save-predictions` and `optic eval merge`: three shards merged give exactly the
numbers of one run, for every task; files that are not the shards of one run are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

TASKS = {
    "classification": ("digits", "cls_data", "test"),
    "detection": ("shapes", "det_data", "test"),
    "instance-segmentation": ("shapes-instances", "inst_data", "test"),
    "segmentation": ("shapes-seg", "seg_data", "test"),
}


def _eval(repository: Path, model: str, data: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "--model", model, "--data", str(data), "--repository", str(repository),
                 "--output", str(out), *extra]) == 0  # fmt: skip
    return json.loads(out.read_text())


@pytest.mark.parametrize("task", list(TASKS))
def test_three_shards_merged_equal_one_run(
    task: str, repository: Path, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    model, fixture, split = TASKS[task]
    data = request.getfixturevalue(fixture) / split
    whole = _eval(repository, model, data, tmp_path / "whole.json")
    shards = []
    for i in range(3):
        shard_file = tmp_path / f"shard-{i}.json"
        part = _eval(repository, model, data, tmp_path / f"part-{i}.json", "--shard", f"{i}/3",
                     "--save-predictions", str(shard_file))  # fmt: skip
        assert part["dataset"]["shard"] == f"{i}/3"
        shards.append(shard_file)
    sizes = [len(json.loads(f.read_text())["records"]) for f in shards]
    assert sum(sizes) == whole["dataset"]["num_images"] and min(sizes) > 0
    report_dir = tmp_path / "report"
    merged_file = tmp_path / "merged.json"
    capsys.readouterr()
    # Given out of order, as a glob over a results volume may list them.
    given = [str(f) for f in reversed(shards)]
    assert main(["eval", "merge", *given, "--output", str(merged_file), "--report", str(report_dir)]) == 0
    merged = json.loads(merged_file.read_text())
    assert merged["metrics"] == whole["metrics"]  # every number, per class and curve, exactly
    assert merged["model"] == whole["model"]
    assert merged["dataset"]["num_images"] == whole["dataset"]["num_images"]
    assert merged["merged_shards"] == 3
    assert json.loads(capsys.readouterr().out)["summary"] == whole["metrics"]["summary"]
    assert (report_dir / "report.html").is_file() and (report_dir / "images.csv").is_file()
    images = json.loads((report_dir / "images.json").read_text())
    assert len(images[0]["images"]) == whole["dataset"]["num_images"]


def test_merge_refuses_what_is_not_one_run(
    repository: Path, cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"s{i}.json")
        _eval(repository, "digits", cls_data / "test", tmp_path / f"r{i}.json", "--shard", f"{i}/2",
              "--save-predictions", str(files[-1]))  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "merge", str(files[0])]) == 2
    assert "shards of 2: missing [1]" in capsys.readouterr().err
    assert main(["eval", "merge", str(files[0]), str(files[0])]) == 2
    assert "given twice [0]" in capsys.readouterr().err
    other = json.loads(files[1].read_text())
    other["dataset"]["fingerprint"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["eval", "merge", str(files[0]), str(tmp_path / "other.json")]) == 2
    assert "not shards of one run: their data set differs" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert main(["eval", "merge", str(tmp_path / "junk.json")]) == 2
    assert "not an optic predictions file" in capsys.readouterr().err
    assert main(["eval", "--model", "digits", "--data", str(cls_data / "test"), "--repository", str(repository),
                 "--shard", "3/2", "--save-predictions", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "needs 0 <= I < N" in capsys.readouterr().err
