"""The one error the readers raise: a data set they cannot read, named with the file and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A data set that cannot be read as it is. `message` names the file and the problem; `detail` is
    JSON-able context (evaluation answers it as a 422 with both)."""

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


def shown(path: Path, root: Path | None) -> str:
    """`path` as the user knows it: relative to the data set's root where it is inside, else its name."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name if root is not None else str(path)
