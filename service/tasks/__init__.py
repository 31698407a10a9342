"""Task registry: one plug-in per task, looked up by the name in model.json."""

from __future__ import annotations

from service.tasks.base import ServeTask

_TASKS: dict[str, type[ServeTask]] = {}


def register_task(cls: type[ServeTask]) -> type[ServeTask]:
    _TASKS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # Importing registers; kept in a function so importing the registry has no side effects.
    from service.tasks import (  # noqa: F401
        classification,
        detection,
        instance_segmentation,
        segmentation,
    )


def get_task(name: str) -> ServeTask:
    _load_builtin()
    try:
        return _TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}") from None


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


__all__ = ["ServeTask", "get_task", "list_tasks", "register_task"]
