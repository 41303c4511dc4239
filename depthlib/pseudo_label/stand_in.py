"""A stand-in accelerator: the labelling actor with its model replaced by a clock.

Most machines here have no GPU, yet the question that sizes a labelling
cluster is whether the CPU stages keep a GPU busy. ``stand_in_actor(rate)``
returns a ``LabelActor`` whose device takes exactly ``batch / rate`` seconds
per forward pass and runs one pass at a time, as a GPU does: a pass queued
while another runs starts when that one ends, and ``finish`` waits for the
pass's end. Everything else the actor does on the host (stacking the inputs,
unpacking and checking the outputs, Ray Data's batching around it) is the
real code. So a job with the stand-in runs at the stand-in's rate exactly when
the CPU side keeps up, and ``job images/s / rate`` is how busy a GPU of that
speed would be.

The "predictions" (:func:`stand_in_prediction`) are a smooth map made from
the input, rounded as a bf16 teacher's are, so the writers encode labels of
about a real teacher's entropy.
"""

from __future__ import annotations

import time

import numpy as np

from depthlib.pseudo_label.stages import LabelActor


def stand_in_prediction(pixels: np.ndarray, block: int = 8) -> np.ndarray:
    """``B x 3 x h x w`` model inputs -> ``B x h x w`` float32 label-like maps: the
    channel mean over ``block x block`` cells, bilinearly upsampled (smooth, with the
    image's layout), rounded to bfloat16 (a bf16 teacher's steps)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(pixels).float().mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    coarse = F.avg_pool2d(x, block, ceil_mode=True)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return (smooth / 255.0 + 0.1).to(torch.bfloat16).float().numpy()


def stand_in_actor(images_per_s: float) -> type:
    """A ``LabelActor`` class whose device labels ``images_per_s`` images per second."""
    if images_per_s <= 0:
        raise ValueError(f"the stand-in's rate must be > 0 images/s, got {images_per_s}")

    class StandInLabelActor(LabelActor):
        rate = float(images_per_s)

        def __init__(self, checkpoint: str = "", encoder: str = "", batch_size: int = 16, **_ignored):
            self.batch_size = batch_size
            self.busy_until = 0.0  # when the device finishes the last queued pass
            self.device_s = 0.0  # device time queued so far (checks the stand-in itself)

        def forward(self, pixels: np.ndarray):
            start = max(time.perf_counter(), self.busy_until)
            self.busy_until = start + len(pixels) / self.rate
            self.device_s += len(pixels) / self.rate
            return self.busy_until, stand_in_prediction(pixels)

        def finish(self, handle) -> np.ndarray:
            done, preds = handle
            wait = done - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            return preds

    StandInLabelActor.__qualname__ = StandInLabelActor.__name__ = f"StandInLabelActor_{images_per_s:g}ips".replace(".", "p")
    return StandInLabelActor
