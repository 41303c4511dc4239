"""A training checkpoint as a directory, and the run's own state files.

Checkpoint directory (one per ``ray.train.report(checkpoint=...)``, named
``step-00001000``; Ray Train uploads it under ``<output>/<run name>/``):

==================  ============================================================
``model.pt``        the model, released key layout (``load_released`` reads it)
``optimizer.pt``    the optimiser state (FQN keys; portable across DDP/FSDP)
``scheduler.pt``    the learning-rate scheduler state
``rng.pt``          torch, numpy and python RNG states of rank 0
``train_state.json`` step, data position (next group, skipped groups), rows
                    skipped so far, seed, best validation, the resolved config
``metrics.jsonl``   every report row up to this step (the run's history)
==================  ============================================================

Everything is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from depthlib import storage
from depthlib.training.plan import DataPosition
from depthlib.training.records import jsonl

RUN_STATE_FILE = "run_state.json"  # <output>/run_state.json: written when a run finishes


@dataclass
class TrainState:
    """What a checkpoint restores besides tensors."""

    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    data_skipped: int = 0
    best_val_abs_rel: float | None = None
    history: list[dict] = field(default_factory=list)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rng_state() -> dict:
    """RNG states as plain data: torch's as a uint8 tensor, numpy's and python's as JSON-able lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def write_checkpoint_dir(directory: str, *, model_state: dict, encoder: str, optimizer_state: dict,
                         scheduler_state: dict, state: TrainState, config: dict) -> None:
    """Write a checkpoint into the local ``directory`` (rank 0)."""
    from depthlib.models.checkpoints import released_bytes

    os.makedirs(directory, exist_ok=True)
    files = {
        "model.pt": released_bytes(model_state, encoder),
        "optimizer.pt": _torch_bytes(optimizer_state),
        "scheduler.pt": _torch_bytes(scheduler_state),
        "rng.pt": _torch_bytes(rng_state()),  # tensors, lists and numbers only: loads with weights_only
        "train_state.json": json.dumps({
            "step": state.step, "data_position": state.position.to_dict(), "data_skipped": state.data_skipped,
            "best_val_abs_rel": state.best_val_abs_rel, "config": config}, indent=1).encode(),
        "metrics.jsonl": jsonl(state.history),
    }
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def _load(path: str):
    with open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def read_checkpoint_dir(directory: str, encoder: str) -> tuple[TrainState, dict, dict, dict, dict]:
    """``(state, model_state, optimizer_state, scheduler_state, rng_state)`` of a
    local checkpoint directory; the model state in ``DepthAnythingV2`` layout."""
    from depthlib.models.checkpoints import released_to_model_state

    with open(os.path.join(directory, "train_state.json")) as f:
        meta = json.load(f)
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    state = TrainState(step=int(meta["step"]), position=DataPosition.from_dict(meta["data_position"]),
                       data_skipped=int(meta.get("data_skipped", 0)),
                       best_val_abs_rel=meta.get("best_val_abs_rel"), history=history)
    model = released_to_model_state(_load(os.path.join(directory, "model.pt")), encoder)
    return (state, model, _load(os.path.join(directory, "optimizer.pt")),
            _load(os.path.join(directory, "scheduler.pt")), _load(os.path.join(directory, "rng.pt")))


def read_run_state(output: str) -> dict | None:
    uri = storage.join(output, RUN_STATE_FILE)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def write_run_state(output: str, state: dict) -> None:
    storage.write_bytes(storage.join(output, RUN_STATE_FILE), json.dumps(state, indent=2, sort_keys=True).encode())
