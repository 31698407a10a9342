"""The image's requirements: the lock's serving set (`uv export`), with ONNX Runtime swapped for the build's.

`pip install .` would pull the CPU `onnxruntime`; a GPU image wants `onnxruntime-gpu` instead, and the
two cannot live side by side (both install the `onnxruntime` module). Every other line stays pinned as
uv.lock has it; an ORT package named without a version gets the locked onnxruntime version.
Run with Python 3.11+.

    uv export --frozen --no-emit-project --no-hashes --format requirements-txt > locked.txt
    python3 requirements.py locked.txt onnxruntime-gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?P<rest>.*)$")


def serving_requirements(locked: Path, ort_package: str) -> list[str]:
    """The exported lines (comments dropped), `onnxruntime==V ; markers` turned into the chosen package."""
    chosen = _REQUIREMENT.match(ort_package.strip())
    if chosen is None:
        raise SystemExit(f"not a requirement: {ort_package!r}")
    lines, swapped = [], 0
    for line in locked.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _REQUIREMENT.match(line)
        if match and match.group("name").lower().replace("_", "-") == "onnxruntime":
            swapped += 1
            version, _, markers = match.group("rest").partition(";")
            pinned = chosen.group("rest").strip() or version.strip()
            line = f"{chosen.group('name')}{pinned}" + (f" ;{markers}" if markers else "")
        lines.append(line)
    if not swapped:
        raise SystemExit(f"{locked}: no onnxruntime requirement to replace with {ort_package}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.stdout.write("\n".join(serving_requirements(Path(sys.argv[1]), sys.argv[2])) + "\n")
