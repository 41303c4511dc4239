"""Did a run learn? A verdict from its metrics history (pure; no I/O).

A run that finishes normally can still have learned nothing (a dead output,
labels that do not match their images, a learning rate that blew the weights
up and clipping that hid it). The verdict compares the run's last measurement
with its starting point:

* with validation: ``val_abs_rel`` of the step-0 row (the model before any
  update; the loop validates there) against the last validation;
* without: the mean training loss of the first log window against the last
  one (weaker: a model can fit its training labels and not generalise).

``learned`` is True when the relative improvement ``1 - last / start`` is at
least ``margin`` and, where the step-0 row holds the validation set's layout
prior (``val_layout_prior_abs_rel``, :mod:`depthlib.evaluation.baselines`),
the last AbsRel is below it, and, for the relative stages, the last training
window's ssi is below ``BLIND_RATIO`` x the ssi of a constant prediction on
the same batches (``ssi_blind``). The last catches the collapse measured in
issue #22: a student whose output became one fixed map for every image (half
of it dead at the final ReLU) kept its training ssi at 0.97, a constant
prediction's level (0.9-1.0), for 200 steps, while its validation AbsRel still improved 14% on the random
start and sat below the layout prior. It is a flag, not a stop: the run summary, the final metrics
row and the pipeline report carry it, and the user decides.
"""

from __future__ import annotations

import math

BLIND_RATIO = 0.9  # at 300 steps: a collapsed student ~1 (ssi 0.97; a constant's 0.9-1.0); student 0.08, teacher 0.61


def learning_verdict(history: list[dict], margin: float) -> dict | None:
    """``{"basis", "start", "last", "improvement", "margin", "layout_prior",
    "ssi_over_blind", "learned"}`` or
    None when the history holds no two comparable measurements.

    ``history``: the run's metrics rows in step order (``metrics.jsonl``).
    ``basis`` is ``"val_abs_rel"`` (lower is better) or ``"loss"``.
    A non-finite last value never counts as learned.
    """
    val = [r for r in history if "val_abs_rel" in r]
    prior = None
    if val and val[0].get("step") == 0 and len(val) > 1:
        basis, start, last = "val_abs_rel", val[0]["val_abs_rel"], val[-1]["val_abs_rel"]
        prior = val[0].get("val_layout_prior_abs_rel")
    else:
        train = [r for r in history if "loss" in r]
        if len(train) < 2:
            return None
        basis, start, last = "loss", train[0]["loss"], train[-1]["loss"]
    finite = math.isfinite(start) and math.isfinite(last) and start > 0
    improvement = 1.0 - last / start if finite else float("nan")
    beats_prior = prior is None or (finite and last < prior)
    train = [r for r in history if "ssi" in r and "ssi_blind" in r]
    blind = round(train[-1]["ssi"] / train[-1]["ssi_blind"], 4) if train and train[-1]["ssi_blind"] > 0 else None
    explains = blind is None or blind < BLIND_RATIO
    return {"basis": basis, "start": start, "last": last,
            "improvement": round(improvement, 4) if finite else None, "margin": margin,
            "layout_prior": prior, "ssi_over_blind": blind,
            "learned": bool(finite and improvement >= margin and beats_prior and explains)}
