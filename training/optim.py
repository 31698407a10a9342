"""Optimizer and per-step learning-rate schedule, chosen by the config (no if-chains in the loop)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; norms and biases get no weight decay (standard practice:
    decaying them only fights BatchNorm's scale and hurts small models)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: adamw, sgd")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, max(0, total - 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "step":
            return float(cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size_epochs))
        return 1.0

    return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LambdaLR:
    """Stepped once per optimizer step, so short runs still get a smooth warm-up and decay."""
    if cfg.scheduler not in ("cosine", "step", "none"):
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; known: cosine, step, none")
    return LambdaLR(optimizer, lr_factor(cfg, max(1, steps_per_epoch)))
