"""Optimiser parameter groups: the paper's encoder/decoder learning rates."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, lr: float, head_lr_multiplier: float = 10.0) -> list[dict]:
    """Two groups: the pretrained encoder at ``lr`` and the DPT head at
    ``lr * head_lr_multiplier`` (paper: 5e-6 and 10x). Frozen parameters are left out."""
    encoder = [p for n, p in model.named_parameters() if n.startswith("pretrained.") and p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("pretrained.") and p.requires_grad]
    return [{"params": encoder, "lr": lr, "name": "encoder"},
            {"params": head, "lr": lr * head_lr_multiplier, "name": "head"}]
