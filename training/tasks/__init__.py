"""Task registry: a task is one `TrainTask` subclass, registered by name.

Built-in tasks are imported on first lookup, so `import training.tasks` stays free of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from training.tasks.base import TrainTask

T = TypeVar("T", bound="type[TrainTask]")

_REGISTRY: dict[str, type[TrainTask]] = {}
# name -> module that registers it; a new task adds one line here and one module.
_BUILTIN: dict[str, str] = {
    "classification": "training.tasks.classification",
    "detection": "training.tasks.detection",
    "segmentation": "training.tasks.segmentation",
    "instance-segmentation": "training.tasks.instance_segmentation",
}


def register_task(name: str) -> Callable[[T], T]:
    def decorator(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_tasks() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_task(name: str) -> TrainTask:
    """A fresh instance of the task plug-in called `name`; raises `KeyError` naming the known tasks."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _REGISTRY[name]()
