"""Optimiser and learning-rate schedule: the paper's encoder/decoder learning rates."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, lr: float, head_lr_multiplier: float = 10.0,
                 weight_decay: float = 0.0) -> list[dict]:
    """Two groups: the pretrained encoder at ``lr`` and the DPT head at
    ``lr * head_lr_multiplier`` (paper: 5e-6 and 10x). Frozen parameters are
    left out. Works on a DDP/FSDP-wrapped model (``module.`` prefixes)."""
    encoder, head = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (encoder if name.removeprefix("module.").startswith("pretrained.") else head).append(p)
    return [{"params": encoder, "lr": lr, "initial_lr": lr, "name": "encoder", "weight_decay": weight_decay},
            {"params": head, "lr": lr * head_lr_multiplier, "initial_lr": lr * head_lr_multiplier,
             "name": "head", "weight_decay": weight_decay}]


# Devices with torch's fused Adam/AdamW kernels that this project trains on (torch >= 2.4: CPU too).
FUSED_DEVICES = ("cuda", "cpu")


def make_optimizer(model: torch.nn.Module, kind: str, lr: float, head_lr_multiplier: float,
                   weight_decay: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam (paper, relative stages) or AdamW (official metric fine-tuning, decoupled decay).

    ``fused``: torch's fused kernel (one launch updates every parameter, instead
    of the ``foreach`` implementation's several per group); None: fused where
    every parameter's device has it (``FUSED_DEVICES``). The same update to float
    rounding (``tests/test_training_parallel.py``); resumes from either's state."""
    groups = param_groups(model, lr, head_lr_multiplier, weight_decay)
    if fused is None:
        fused = all(p.device.type in FUSED_DEVICES for g in groups for p in g["params"])
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), fused=fused)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused)
    raise ValueError(f"unknown optimizer {kind!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Multiplier of the base learning rates at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` over the first ``warmup_steps``, then
    poly decay ``(1 - t) ** power`` with ``t`` the share of the post-warm-up
    steps done (official metric fine-tuning: power 0.9). ``power = 0``: constant.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if power == 0:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return max(0.0, 1.0 - t) ** power


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_factor`; its state (``last_epoch``) is checkpointed with the run."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, power))
