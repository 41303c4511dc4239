"""The export job: one checkpoint of the project in, one model in a format people run, out.

``ExportConfig`` holds the settings of ``ray_jobs/export.py``;
:func:`check_inputs` finds every bad setting or input before any work
(the entry script prints it as one line and exits 2); :func:`run_export`
loads the checkpoint strictly, writes the export into a local temporary
directory, checks the written files against the project's model, and
copies them to ``--output`` (a local directory or an ``s3://`` URI).
No Ray cluster is needed.

==============  ==============================================================
``hf``          ``config.json``, ``model.safetensors``, ``preprocessor_config.json``,
                ``README.md``: ``AutoModelForDepthEstimation.from_pretrained(DIR)``
                and ``pipeline("depth-estimation", model=DIR)``
``onnx``        ``model.onnx`` (+ ``README.md``): dynamic batch, height, width
``safetensors`` ``model.safetensors`` (+ ``README.md``): the released layout
==============  ==============================================================

``--output`` ending in ``.onnx`` / ``.safetensors`` names that one file instead
of a directory (no card is written then).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Literal, Optional

from depthlib import storage
from depthlib.models.specs import MODEL_SPECS

FORMATS = ("hf", "onnx", "safetensors")
FILE_NAMES = {"onnx": "model.onnx", "safetensors": "model.safetensors"}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# fp32 agreement required of the written files with the project's model (max |a - b| / max |b|).
TOLERANCE = {"hf": 1e-4, "onnx": 1e-3, "safetensors": 0.0}
EXTRA_MODULES = {"hf": ("transformers", "safetensors"), "onnx": ("onnx", "onnxscript", "onnxruntime"),
                 "safetensors": ("safetensors",)}


@dataclass(kw_only=True)
class ExportConfig:
    """Export a Depth Anything V2 checkpoint as a transformers folder, an ONNX file or safetensors."""

    checkpoint: str = field(metadata={"help": "a run's model.pth, a released .pth, a .safetensors, or a run / "
                                              "Ray Train checkpoint directory (local, s3:// or gs://)"})
    encoder: str = field(metadata={"help": f"model size: {' | '.join(MODEL_SPECS)}"})
    format: Literal["hf", "onnx", "safetensors"] = field(metadata={"help": "hf | onnx | safetensors"})
    output: str = field(metadata={
        "help": "output directory (local, s3:// or gs://), or a .onnx / .safetensors file name"})
    metric: bool = field(default=False, metadata={"help": "the checkpoint is a metric-depth model"})
    max_depth: float = field(default=20.0, metadata={"help": "metric models: depth of a sigmoid output of 1, metres"})
    report: Optional[str] = field(default=None, metadata={
        "help": "evaluation report (report.md / report.json or its directory) for the model card; "
                "default: one beside the checkpoint"})
    verify: bool = field(default=True, metadata={
        "help": "reload the written export and compare it with the project's model on random input"})

    def __post_init__(self):
        if self.encoder not in MODEL_SPECS:
            raise ValueError(f"--encoder must be one of {sorted(MODEL_SPECS)}, got {self.encoder!r}")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {list(FORMATS)}, got {self.format!r}")
        if not (self.max_depth > 0 and self.max_depth < float("inf")):
            raise ValueError(f"--max-depth must be a positive number of metres, got {self.max_depth}")
        if self.format == "hf" and self.output.endswith((".onnx", ".safetensors")):
            raise ValueError(f"--format hf writes a directory; --output {self.output} names a file")
        if self.format == "onnx" and self.output.endswith(".safetensors") or \
                self.format == "safetensors" and self.output.endswith(".onnx"):
            raise ValueError(f"--output {self.output} names a file of another format than --format {self.format}")


def resolve_checkpoint(uri: str) -> str:
    """The weights file of ``--checkpoint``: the file itself; a run directory's ``model.pth``
    (or, for a run not finished yet, its latest Ray Train checkpoint); a Ray Train checkpoint
    directory's ``model.pt``."""
    name = storage.redact(uri)
    if uri.lower().endswith(WEIGHT_SUFFIXES):
        if not storage.exists(uri):
            raise FileNotFoundError(f"--checkpoint {name} does not exist")
        return uri
    for candidate in ("model.pth", "model.pt", "model.safetensors"):
        if storage.exists(storage.join(uri, candidate)):
            return storage.join(uri, candidate)
    steps = sorted(o.uri for o in storage.list_objects(storage.join(uri, "ray_train"), suffixes="model.pt")
                   if o.key.count("/") == 1 and o.key.endswith("/model.pt"))
    if steps:
        return steps[-1]  # step-%08d names sort by step
    raise FileNotFoundError(f"--checkpoint {name}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) and no "
                            "model.pth / model.pt / ray_train/step-*/model.pt in it")


def check_inputs(cfg: ExportConfig) -> str:
    """Every check that needs no model: the export's packages, the checkpoint (exists, loads,
    this encoder size, every key fits), the report. Returns the weights file's URI."""
    import importlib.util

    from depthlib.models.checkpoints import check_checkpoint
    from depthlib.export.model_card import resolve_report

    missing = [m for m in EXTRA_MODULES[cfg.format] if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--format {cfg.format} needs {', '.join(missing)}: pip install 'depthlib[export]'")
    weights = resolve_checkpoint(cfg.checkpoint)
    check_checkpoint(weights, cfg.encoder, cfg.metric)
    if cfg.report:
        resolve_report(cfg.report)
    return weights


def max_relative_error(a, b) -> float:
    """``max |a - b| / max |b|``: the error relative to the output's scale (disparity is 0 where
    the ReLU clips, so a per-pixel ratio would divide by zero)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs of different shapes: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def verify_export(model, fmt: str, path: str, sizes=((518, 518), (392, 518))) -> dict[str, float]:
    """Load the written export and compare it with ``model`` (fp32, CPU) on seeded random inputs;
    returns ``{"HxW": max relative error}``. transformers is compared at 518 x 518 only: at other
    sizes it resizes position embeddings differently (see ``depthlib.export.hf``)."""
    import torch

    from depthlib.models.checkpoints import load_released

    gen = torch.Generator().manual_seed(0)
    if fmt == "hf":
        from transformers import AutoModelForDepthEstimation

        other = AutoModelForDepthEstimation.from_pretrained(path).eval()
        run = lambda x: other(pixel_values=x).predicted_depth  # noqa: E731
        sizes = sizes[:1]
    elif fmt == "onnx":
        from depthlib.export.onnx_file import onnx_session, run_onnx

        session = onnx_session(path)
        run = lambda x: torch.from_numpy(run_onnx(session, x))  # noqa: E731
    else:
        other = load_released(path, model.encoder, metric=model.metric, max_depth=model.max_depth)
        run = other
    errors = {}
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=gen)
            errors[f"{h}x{w}"] = max_relative_error(run(x), model(x))
    return errors


def _notes(fmt: str) -> list[str]:
    if fmt == "hf":
        return ["transformers' DINOv2 resizes position embeddings to the patch grid by size; the released "
                "Depth Anything V2 code (and depthlib) by DINOv2's older `scale_factor = (grid + 0.1) / 37`. "
                "At a 518 x 518 input (no resizing) outputs agree to float rounding; at other sizes they "
                "differ slightly (depthlib's README gives measured figures).",
                "`DPTImageProcessor` resizes with antialiasing and keeps the scale closest to 1 for images "
                "smaller than 518 on both sides, where the released code resizes without antialiasing and "
                "always brings the shorter side to 518."]
    if fmt == "onnx":
        from depthlib.export.onnx_file import OPSET

        return [f"ONNX opset {OPSET}; input `image` B x 3 x H x W float32 (H, W multiples of 14), output "
                "`depth` B x H x W; position embeddings resized with the released rule inside the graph."]
    return ["Keys and values as the released `.pth` (`pretrained.*`, `depth_head.*`)."]


def _sibling(path: str, name: str) -> str:
    """``name`` in the folder of ``path`` (a local path or URI)."""
    head, sep, _ = path.rstrip("/").rpartition("/")
    return f"{head}{sep}{name}" if sep else name


def run_export(cfg: ExportConfig, weights: str | None = None, log=print) -> dict:
    """Export ``cfg.checkpoint``; returns a summary (files written, verification errors)."""
    from depthlib.export.model_card import find_records, model_card
    from depthlib.models.checkpoints import load_released

    weights = weights or check_inputs(cfg)
    model = load_released(weights, cfg.encoder, metric=cfg.metric, max_depth=cfg.max_depth).float().eval()
    records = find_records(weights, cfg.report)
    single_file = cfg.format != "hf" and cfg.output.endswith((".onnx", ".safetensors"))
    with tempfile.TemporaryDirectory(prefix="depthlib-export-") as tmp:
        main_name = os.path.basename(cfg.output.rstrip("/")) if single_file else FILE_NAMES.get(cfg.format)
        card = model_card(records, encoder=cfg.encoder, metric=cfg.metric, max_depth=cfg.max_depth,
                          fmt=cfg.format, path="." if cfg.format == "hf" else main_name, notes=_notes(cfg.format))
        if cfg.format == "hf":
            from depthlib.export.hf import save_hf_folder

            save_hf_folder(model, tmp, card)
            main = tmp
        else:
            main = os.path.join(tmp, main_name)
            if cfg.format == "onnx":
                from depthlib.export.onnx_file import export_onnx

                export_onnx(model, main)
            else:
                from depthlib.export.safetensors_file import released_safetensors_bytes

                with open(main, "wb") as f:
                    f.write(released_safetensors_bytes(model))
            if not single_file:
                with open(os.path.join(tmp, "README.md"), "w") as f:
                    f.write(card)
        errors = verify_export(model, cfg.format, main) if cfg.verify else {}
        worst = max(errors.values(), default=0.0)
        if worst > TOLERANCE[cfg.format]:
            raise RuntimeError(f"the written {cfg.format} export differs from the checkpoint's model by "
                               f"{worst:.3g} (relative; allowed {TOLERANCE[cfg.format]:g}): {errors}")
        files = []
        for name in sorted(os.listdir(tmp)):
            # a single-file output names the main file; ONNX external data ("<name>.data") goes beside it
            dest = _sibling(cfg.output, name) if single_file else storage.join(cfg.output, name)
            with open(os.path.join(tmp, name), "rb") as f:
                storage.write_bytes(dest, f.read())
            files.append(dest)
    for k, v in errors.items():
        log(f"[export] check {cfg.format} vs project model at {k}: max relative error {v:.2e}")
    log(f"[export] {cfg.format}: wrote {', '.join(storage.redact(f) for f in files)}")
    return {"format": cfg.format, "weights": weights, "files": files, "errors": errors,
            "records": records.sources, "report": records.report_source}
