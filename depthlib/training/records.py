"""What a training run leaves for people: metrics.jsonl, gauges, trackers, curves.png, samples/.

Written by rank 0 only. ``metrics.jsonl`` holds one JSON object per report of
the run, across restarts: a resumed run starts from the rows stored in its
checkpoint (the steps it does not redo) and rewrites the file whole
(atomically; object storage has no append), at most every
``FLUSH_INTERVAL_S`` seconds and at every checkpoint and at the end.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from depthlib import storage

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
FLUSH_INTERVAL_S = 30.0
GAUGES = {
    "loss": "training loss (mean over workers, last log window)",
    "lr": "encoder learning rate",
    "images_per_s": "training images per second (all workers)",
    "val_abs_rel": "validation AbsRel",
    "val_d1": "validation delta1",
    "step": "optimiser step",
}


class MetricsLog:
    """Rows of the run in memory, mirrored to ``<output>/metrics.jsonl``."""

    def __init__(self, output: str, rows: list[dict]):
        self.uri = storage.join(output, METRICS_FILE)
        self.rows = rows  # shared with the caller (the run's history), not copied
        self._flushed = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        if not force and time.time() - self._flushed < FLUSH_INTERVAL_S:
            return
        storage.write_bytes(self.uri, jsonl(self.rows))
        self._flushed = time.time()


def jsonl(rows: list[dict]) -> bytes:
    """Rows as JSON lines (sorted keys), the format of ``metrics.jsonl``."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


class Gauges:
    """``ray.util.metrics`` gauges ``depthlib_train_<name>`` (the dashboard's
    metrics view, Prometheus, Grafana), tagged with the run and stage."""

    def __init__(self, run: str, stage: str):
        from ray.util.metrics import Gauge

        self.tags = {"run": run, "stage": stage}
        self.gauges = {name: Gauge(f"depthlib_train_{name}", description=desc, tag_keys=("run", "stage"))
                       for name, desc in GAUGES.items()}

    def set(self, row: dict[str, Any]) -> None:
        for name, gauge in self.gauges.items():
            value = row.get(name)
            if isinstance(value, (int, float)) and np.isfinite(value):
                gauge.set(float(value), tags=self.tags)


class Tracker:
    """TensorBoard or Weights & Biases, when asked for (an optional extra:
    ``pip install 'depthlib[tracking]'``). TensorBoard writes event files
    locally and copies them to ``<output>/tensorboard/`` at every flush, so
    ``tensorboard --logdir`` works on a local output and on a synced copy."""

    def __init__(self, kind: str, output: str, run_name: str, config: dict, project: str):
        self.kind = kind
        self.output = output
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("--tracker tensorboard needs the tensorboard package "
                                   "(pip install 'depthlib[tracking]')") from e
            self.local_dir = tempfile.mkdtemp(prefix="depthlib-tb-")
            self.writer = SummaryWriter(self.local_dir)
        elif kind == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("--tracker wandb needs the wandb package (pip install 'depthlib[tracking]')") from e
            self.run = wandb.init(project=project, name=run_name, id=run_name, resume="allow",
                                  config=config, dir=tempfile.mkdtemp(prefix="depthlib-wandb-"))
        else:
            raise ValueError(f"unknown tracker {kind!r}")

    def log(self, row: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in row.items()
                  if k not in ("step", "time") and isinstance(v, (int, float)) and np.isfinite(v)}
        if self.kind == "tensorboard":
            for k, v in values.items():
                self.writer.add_scalar(k, v, global_step=row["step"], walltime=row.get("time"))
        else:
            self.run.log(values, step=row["step"])

    def flush(self) -> None:
        if self.kind != "tensorboard":
            return
        self.writer.flush()
        for name in os.listdir(self.local_dir):
            with open(os.path.join(self.local_dir, name), "rb") as f:
                storage.write_bytes(storage.join(self.output, "tensorboard", name), f.read())

    def close(self) -> None:
        self.flush()
        if self.kind == "tensorboard":
            self.writer.close()
        else:
            self.run.finish()


def curves_png(rows: list[dict], title: str) -> bytes:
    """Loss terms, learning rate and validation metrics against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_abs_rel" in r]
    val_mim = [r for r in rows if "val_mim" in r]  # the pretraining stage
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    terms = sorted({k for r in train for k in r if k in ("loss", "ssi", "gm", "feat", "silog", "mim")})
    for k in terms:
        pts = [(r["step"], r[k]) for r in train if k in r]
        axes[0].plot(*zip(*pts), label=k)
    axes[0].set(title="training loss", xlabel="step", yscale="log" if train else "linear")
    axes[0].legend()
    if train:
        axes[1].plot([r["step"] for r in train], [r["lr"] for r in train], label="encoder lr")
    axes[1].set(title="learning rate", xlabel="step")
    if val:
        steps = [r["step"] for r in val]
        axes[2].plot(steps, [r["val_abs_rel"] for r in val], "o-", label="AbsRel")
        axes[2].plot(steps, [r["val_d1"] for r in val], "s-", label="delta1")
        axes[2].legend()
    elif val_mim:
        steps = [r["step"] for r in val_mim]
        axes[2].plot(steps, [r["val_mim"] for r in val_mim], "o-", label="held-out masked loss")
        axes[2].plot(steps, [r["val_feature_spread"] for r in val_mim], "s-", label="feature spread")
        axes[2].legend()
    axes[2].set(title="validation", xlabel="step")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def samples_grid(images: list[np.ndarray], preds: list[np.ndarray], targets: list[np.ndarray],
                 valids: list[np.ndarray], metric: bool) -> np.ndarray:
    """Rows of image | prediction | target, colourised (near is bright); ``H x W x 3`` uint8.

    Relative predictions and targets are disparity; metric ones metres (the
    same colour range for prediction and target, so scale errors show)."""
    from depthlib.visualize import colorize

    rows = []
    for image, pred, target, valid in zip(images, preds, targets, valids):
        if metric:  # one colour scale for both, so a scale error shows
            both = colorize(np.concatenate([pred, target], axis=1),
                            np.concatenate([np.ones_like(valid), valid], axis=1), invert=True)
            p, t = both[:, :pred.shape[1]], both[:, pred.shape[1]:]
        else:
            p = colorize(pred)
            t = colorize(np.where(valid, 1.0 / np.maximum(target, 1e-6), 0.0), valid)
        rows.append(np.concatenate([image, p, t], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
