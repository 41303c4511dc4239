"""One optimisation step of relative-depth training (teacher or student)."""

from __future__ import annotations

import torch

from depthlib.losses import relative_depth_loss


def disparity_target(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Metric depth (metres, ``B x H x W``) -> disparity 1/depth on valid pixels, 0 elsewhere."""
    return torch.where(valid & (depth > 0), 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))


def relative_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  disparity: torch.Tensor, mask: torch.Tensor, trim: float = 0.0) -> dict[str, float]:
    """Forward, SSI + gradient-matching loss (1:2), backward, step.

    ``images``: ``B x 3 x H x W`` normalised; ``disparity``/``mask``: ``B x H x W``.
    Returns the loss terms as floats (for logging).
    """
    model.train()
    pred = model(images)
    losses = relative_depth_loss(pred, disparity, mask, trim=trim)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
