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

The "predictions" are a cheap function of the input (its mean over the colour
channels), so labels have a real image's entropy for the writers to encode.
"""

from __future__ import annotations

import time

import numpy as np

from depthlib.pseudo_label.stages import LabelActor


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
            preds = pixels.astype(np.float32).mean(axis=1)
            return self.busy_until, preds

        def finish(self, handle) -> np.ndarray:
            done, preds = handle
            wait = done - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            return preds

    StandInLabelActor.__qualname__ = StandInLabelActor.__name__ = f"StandInLabelActor_{images_per_s:g}ips".replace(".", "p")
    return StandInLabelActor
