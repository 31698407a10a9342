"""Print the project's serving requirements, with ONNX Runtime swapped for the build's choice.

`pip install .` would pull the CPU `onnxruntime`; a GPU image wants `onnxruntime-gpu` instead, and the
two cannot live side by side (both install the `onnxruntime` module). Run with Python 3.11+ (tomllib).

    python3 requirements.py pyproject.toml onnxruntime-gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def serving_requirements(pyproject: Path, ort_package: str) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    name = re.compile(r"^\s*([A-Za-z0-9._-]+)")
    kept = [d for d in dependencies if name.match(d).group(1).lower().replace("_", "-") != "onnxruntime"]  # type: ignore[union-attr]
    if len(kept) == len(dependencies):
        raise SystemExit(f"{pyproject}: no onnxruntime dependency to replace with {ort_package}")
    return [*kept, ort_package]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.stdout.write("\n".join(serving_requirements(Path(sys.argv[1]), sys.argv[2])) + "\n")
