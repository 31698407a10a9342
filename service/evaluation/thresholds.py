"""Per-class score thresholds from an evaluation, published as a new model version that serving uses.

`optic export --thresholds-from REPORT`: the report's per-class F1-maximizing thresholds go into a new
version's `model.json` (`params.class_thresholds`, by label), beside the same graph, byte for byte. Versions
stay immutable: the evaluated one is left as it was. /detect and /segment apply them when a request names
no `score_threshold`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.metadata import ModelMetadata, next_version, sha256_file, write_model_version

THRESHOLD_TASKS = ("detection", "instance-segmentation")


def evaluations_in(document: Any) -> list[dict[str, Any]]:
    """The reports in what `optic eval --output`, a job's result or `GET /evaluations/ID` wrote."""
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        document = document["result"]
    if isinstance(document, dict) and isinstance(document.get("evaluations"), list):
        return document["evaluations"]
    if isinstance(document, dict) and "model" in document and "metrics" in document:
        return [document]
    raise ValueError("not an evaluation report (optic eval --output, or an evaluation job's JSON)")


def pick_report(reports: list[dict[str, Any]], model: str | None) -> dict[str, Any]:
    if model is None:
        if len(reports) != 1:
            names = ", ".join(f"{r['model']['name']}:{r['model']['version']}" for r in reports)
            raise ValueError(f"the report compares several models ({names}): name one with --model NAME:VERSION")
        return reports[0]
    name, _, version = model.partition(":")
    for report in reports:
        if report["model"]["name"] == name and (not version or report["model"]["version"] == version):
            return report
    raise ValueError(f"the report holds no evaluation of {model}")


def publish_thresholds(
    report_path: Path, repository: Path, *, model: str | None = None, version: str | None = None
) -> Path:
    """The new version's folder: the evaluated version's graph with the report's thresholds."""
    report = pick_report(evaluations_in(json.loads(report_path.read_text())), model)
    name, source_version, task = report["model"]["name"], report["model"]["version"], report["model"]["task"]
    if task not in THRESHOLD_TASKS:
        raise ValueError(f"{name}:{source_version} is a {task} model: per-class thresholds are for detection models")
    thresholds = report.get("thresholds") or report.get("metrics", {}).get("thresholds")
    if not thresholds:
        raise ValueError("the report has no per-class thresholds (no class had both detections and ground truth)")
    source_dir = repository / name / source_version
    if not (source_dir / "model.json").is_file():
        raise ValueError(f"{source_dir} is not in the repository: the report's model must be there to publish from")
    metadata = ModelMetadata.read(source_dir / "model.json")
    onnx_path = source_dir / "model.onnx"
    if sha256_file(onnx_path) != metadata.sha256:
        raise ValueError(f"{onnx_path} does not match its model.json sha256: refusing to publish from it")
    unknown = sorted(set(thresholds) - set(metadata.labels))
    if unknown:
        raise ValueError(f"thresholds for labels the model does not have: {', '.join(unknown)}")
    new_version = version or next_version(repository, name)
    provenance = metadata.provenance.model_copy(
        update={
            "thresholds_from": {
                "report": str(report_path),
                "version": source_version,
                "dataset": report.get("dataset", {}),
            }
        }
    )
    published = metadata.model_copy(
        update={
            "version": new_version,
            "params": {**metadata.params, "class_thresholds": {k: float(v) for k, v in sorted(thresholds.items())}},
            "provenance": provenance,
        }
    )
    return write_model_version(repository, published, onnx_path)
