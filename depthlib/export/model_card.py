"""What the run's records know about an exported checkpoint, and the model card made from them.

:func:`find_records` looks beside the weights file for what training and
evaluation left there (DESIGN.md §4):

* a training run directory (``model.pth`` beside ``config.json``,
  ``run_state.json``): stage, encoder, training data URIs, steps, the last
  validation row;
* a Ray Train checkpoint directory (``model.pt`` beside ``train_state.json``,
  holding the step and the resolved config; the run's ``config.json`` two
  levels up);
* an evaluation report (``report.md``, else ``report.json``) in the same
  directory, or the one given with ``--report`` (a file or a directory).

A released checkpoint has none of these; the card then says so.
:func:`model_card` renders ``README.md`` with Hugging Face Hub metadata.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from depthlib import __version__, storage

VALIDATION_KEYS = ("val_abs_rel", "val_d1", "val_silog", "val_rmse", "val_images")


@dataclass
class RunRecords:
    """Facts about a checkpoint gathered from files next to it (all optional)."""

    checkpoint: str
    config: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the record files read
    report_markdown: str | None = None
    report_source: str | None = None


def parent(uri: str) -> str:
    """The directory of a local path or URI (``/``-separated for URIs)."""
    uri = str(uri).rstrip("/")
    head, sep, _ = uri.rpartition("/")
    return head if sep else "."


def _read_json(uri: str) -> Any | None:
    try:
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
    except (ValueError, OSError):
        return None


def _report_markdown(uri: str) -> str | None:
    """Evaluation tables of ``report.md`` (or of ``report.json`` rendered by the evaluation job's
    own renderer): the sections before the protocol, without picture links (they would not
    resolve beside an exported model)."""
    if uri.endswith(".json"):
        from depthlib.evaluation.report import render_markdown

        text = render_markdown(json.loads(storage.read_bytes(uri)))
    else:
        text = storage.read_bytes(uri).decode("utf-8", errors="replace")
    keep, on = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            on = not line.startswith(("## Protocol", "## Worst images"))
            if on:
                line = "#" + line  # one level below the card's sections
        if on and not line.lstrip().startswith("!["):
            keep.append(line)
    while keep and not keep[-1].strip():
        keep.pop()
    return "\n".join(keep) if keep else None


def resolve_report(uri: str) -> str:
    """A report file for ``--report``: the file itself or ``report.md`` / ``report.json`` in a directory."""
    if uri.endswith((".md", ".json")):
        if not storage.exists(uri):
            raise FileNotFoundError(f"--report {storage.redact(uri)} does not exist")
        return uri
    for name in ("report.md", "report.json"):
        candidate = storage.join(uri, name)
        if storage.exists(candidate):
            return candidate
    raise FileNotFoundError(f"--report {storage.redact(uri)}: neither a report file nor a directory holding "
                            "report.md / report.json")


def find_records(weights_uri: str, report: str | None = None) -> RunRecords:
    """Gather :class:`RunRecords` for the weights file ``weights_uri``."""
    rec = RunRecords(checkpoint=weights_uri)
    here = parent(weights_uri)
    train_state = _read_json(storage.join(here, "train_state.json"))
    if isinstance(train_state, dict):  # a Ray Train checkpoint directory: <run>/ray_train/step-N/
        rec.sources.append(storage.join(here, "train_state.json"))
        rec.step = train_state.get("step")
        rec.config = dict(train_state.get("config") or {})
        run_dir = parent(parent(here))
    else:
        run_dir = here
    config = _read_json(storage.join(run_dir, "config.json"))
    if isinstance(config, dict):
        rec.sources.append(storage.join(run_dir, "config.json"))
        rec.config = {**(config.get("config") or {}), **rec.config}  # the checkpoint's own config wins
    run_state = _read_json(storage.join(run_dir, "run_state.json"))
    if isinstance(run_state, dict) and run_dir == here:
        rec.sources.append(storage.join(run_dir, "run_state.json"))
        rec.step = run_state.get("finished_step", rec.step)
        final = run_state.get("final") or {}
        rec.validation = {k: final[k] for k in VALIDATION_KEYS if k in final}
    report_uri = resolve_report(report) if report else next(
        (u for u in (storage.join(here, "report.md"), storage.join(here, "report.json")) if storage.exists(u)), None)
    if report_uri:
        rec.report_markdown = _report_markdown(report_uri)
        rec.report_source = report_uri
    return rec


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{storage.redact(v)}`" for v in value) or "–"
    return f"`{storage.redact(value)}`" if isinstance(value, str) else str(value)


USAGE = {
    "hf": """```python
from transformers import pipeline

pipe = pipeline("depth-estimation", model="{path}")
result = pipe("photo.jpg")  # result["predicted_depth"]: {kind} at the image's size; result["depth"]: a PIL picture
```""",
    "onnx": """```python
import onnxruntime as ort  # input "image": B x 3 x H x W float32, ImageNet-normalised, H and W multiples of 14

session = ort.InferenceSession("{path}", providers=["CPUExecutionProvider"])
depth = session.run(["depth"], {{"image": images}})[0]  # B x H x W {kind}
```
Preprocess as the released model: shorter side to 518, aspect kept, sides rounded to multiples of 14,
bicubic, ImageNet mean and std (`depthlib.transforms.preprocess`).""",
    "safetensors": """```python
from depthlib.models import load_released  # or the official code: load_state_dict(safetensors.torch.load_file(...))

model = load_released("{path}", encoder="{encoder}"{metric_args})
```""",
}


def model_card(rec: RunRecords, *, encoder: str, metric: bool, max_depth: float, fmt: str, path: str,
               notes: list[str] | None = None) -> str:
    """``README.md`` for an export in format ``fmt`` whose main file is at ``path`` (relative)."""
    kind = "metric depth in metres" if metric else "relative inverse depth (disparity, affine-invariant)"
    cfg = rec.config
    front = ["---", "tags:", "- depth-anything-v2", "- depth-estimation", "- depthlib"]
    if fmt == "hf":
        front += ["library_name: transformers", "pipeline_tag: depth-estimation"]
    front.append("---")
    lines = front + ["", f"# Depth Anything V2 ({encoder}, {'metric' if metric else 'relative'}) – {fmt} export", ""]
    lines.append(f"Exported by depthlib {__version__} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
                 f"from `{storage.redact(rec.checkpoint)}`. Output: {kind}.")
    lines += ["", "## Model", "", "| | |", "|---|---|"]
    rows = [("encoder", f"`{encoder}`"), ("depth", kind)]
    if metric:
        rows.append(("max depth (sigmoid output 1)", f"{max_depth:g} m"))
    rows.append(("stage", _fmt(cfg["stage"]) if "stage" in cfg else "not recorded"))
    rows.append(("training data", _fmt(cfg["data"]) if cfg.get("data") else "not recorded"))
    rows.append(("optimiser steps", str(rec.step) if rec.step is not None else
                 (f"{cfg['steps']} planned" if "steps" in cfg else "not recorded")))
    for key, label in (("init_from", "initial weights"), ("pretrained_encoder", "pretrained encoder"),
                       ("val_data", "validation data"), ("crop", "training crop"),
                       ("global_batch_size", "global batch"), ("batch_size", "batch per worker"),
                       ("workers", "workers"), ("lr", "encoder learning rate"), ("seed", "seed")):
        if cfg.get(key) is not None:
            rows.append((label, _fmt(cfg[key])))
    for k, v in rec.validation.items():
        rows.append((f"last validation {k[4:] if k.startswith('val_') else k}", _fmt(v)))
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines.append("")
    if rec.sources:
        lines.append("Records read: " + ", ".join(f"`{storage.redact(s)}`" for s in rec.sources) + ".")
    else:
        lines.append("No training records were found beside the checkpoint (a released or copied checkpoint).")
    lines += ["", "## Evaluation", ""]
    if rec.report_markdown:
        lines += [f"From `{storage.redact(rec.report_source)}`:", "", rec.report_markdown]
    else:
        lines.append("No evaluation report was found beside the checkpoint or given with `--report`.")
    metric_args = f", metric=True, max_depth={max_depth:g}" if metric else ""
    lines += ["", "## Use", "", USAGE[fmt].format(path=path, kind=kind, encoder=encoder, metric_args=metric_args)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
