"""``make demo``: the pipeline end to end on one machine, with real learning.

    .venv/bin/python -m depthlib.demo [--output demo_output] [--checkpoint depth_anything_v2_vits.pth --encoder vits]

1. Render synthetic scenes with exact depth into Parquet shards, and a bucket
   of "photo"-style JPEGs that stand in for real unlabeled images (Ray tasks).
2. Teacher: train a tiny Depth Anything V2 on the synthetic shards for a few
   minutes on the CPU (SSI + gradient-matching loss), reporting zero-shot
   AbsRel / delta1 on held-out scenes before and after, then export it in the
   released checkpoint format. With ``--checkpoint`` a released model is the
   teacher instead and no training happens.
3. Pseudo-label the photo bucket with the Ray Data job (local Ray, local
   storage): labels/, errors/, samples/ pictures and summary.json.

Every number printed is computed in this run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from depthlib import shards, storage
from depthlib.cli import parse_config


@dataclass(kw_only=True)
class DemoConfig:
    """Run the whole pipeline on embedded defaults."""

    output: str = field(default="demo_output", metadata={"help": "where everything is written (local dir or URI)"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "a released-format teacher; default: train a tiny one here"})
    encoder: str = field(default="tiny", metadata={"help": "encoder of --checkpoint"})
    train_scenes: int = field(default=384, metadata={"help": "synthetic training scenes"})
    val_scenes: int = field(default=32, metadata={"help": "held-out synthetic scenes for evaluation"})
    scene_size: int = field(default=126, metadata={"help": "side of the square training scenes (multiple of 14)"})
    train_steps: int = field(default=400, metadata={"help": "teacher optimisation steps"})
    batch_size: int = field(default=8, metadata={"help": "teacher batch size"})
    lr: float = field(default=2e-4, metadata={"help": "encoder learning rate (head: 10x)"})
    photos: int = field(default=48, metadata={"help": "unlabeled photo-style images to pseudo-label"})
    photo_size: str = field(default="240x320", metadata={"help": "HxW of the photo-style images"})
    seed: int = field(default=0, metadata={"help": "seed of data and initialisation"})

    def __post_init__(self):
        if self.scene_size % 14:
            raise ValueError("--scene-size must be a multiple of 14")


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _load_scenes(shard_dir: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All shard rows as (images B x 3 x H x W normalised, depth B x H x W metres, valid B x H x W)."""
    from depthlib.transforms import normalize, to_float_chw

    images, depths, valids = [], [], []
    for uri in shards.list_shards(shard_dir):
        for row in shards.read_shard(uri).to_pylist():
            s = shards.decode_sample(row)
            images.append(normalize(to_float_chw(s.image)))
            depths.append(torch.from_numpy(s.depth))
            valids.append(torch.from_numpy(s.valid))
    return torch.stack(images), torch.stack(depths), torch.stack(valids)


@torch.no_grad()
def _evaluate(model, images, depth, valid) -> dict[str, float]:
    from depthlib.metrics import evaluate_relative

    model.eval()
    pred = torch.cat([model(images[i:i + 16]) for i in range(0, len(images), 16)])
    m = evaluate_relative(pred, depth, valid, min_depth=0.1, max_depth=100.0)
    return {"abs_rel": float(m["abs_rel"].mean()), "d1": float(m["d1"].mean())}


def train_tiny_teacher(cfg: DemoConfig, shard_dir: str, out_uri: str) -> dict:
    from depthlib.models import build_model, export_released
    from depthlib.training import disparity_target, param_groups, relative_step

    torch.manual_seed(cfg.seed)
    images, depth, valid = _load_scenes(shard_dir)
    n_val = cfg.val_scenes
    tr = (images[n_val:], depth[n_val:], valid[n_val:])
    va = (images[:n_val], depth[:n_val], valid[:n_val])
    model = build_model("tiny")
    before = _evaluate(model, *va)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr), weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.seed)
    t0, log_every = time.time(), max(1, cfg.train_steps // 8)
    running = []
    for step in range(1, cfg.train_steps + 1):
        idx = torch.randint(0, len(tr[0]), (cfg.batch_size,), generator=g)
        x, d, v = tr[0][idx], tr[1][idx], tr[2][idx]
        if torch.rand(1, generator=g) < 0.5:  # horizontal flip
            x, d, v = x.flip(-1), d.flip(-1), v.flip(-1)
        losses = relative_step(model, opt, x, disparity_target(d, v), v)
        running.append(losses["loss"])
        if step % log_every == 0 or step == 1:
            _log(f"teacher step {step:4d}/{cfg.train_steps}  loss {np.mean(running):.4f}  "
                 f"({time.time() - t0:.0f}s)")
            running = []
    after = _evaluate(model, *va)
    export_released(model, out_uri)
    return {"before": before, "after": after, "steps": cfg.train_steps, "seconds": round(time.time() - t0, 1),
            "train_scenes": len(tr[0]), "val_scenes": n_val}


def main(argv=None) -> dict:
    cfg = parse_config(DemoConfig, argv)
    import ray

    from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label
    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = cfg.output
    report: dict = {}

    _log("1/3 rendering synthetic training scenes (shards) and a photo-style bucket (JPEG files)")
    syn_dir = storage.join(out, "synthetic")
    make_synthetic(MakeSyntheticConfig(output=syn_dir, count=cfg.train_scenes + cfg.val_scenes,
                                       size=f"{cfg.scene_size}x{cfg.scene_size}", seed=cfg.seed,
                                       style="synthetic", format="shards", scenes_per_task=64), progress=False)
    bucket = storage.join(out, "bucket")
    make_synthetic(MakeSyntheticConfig(output=bucket, count=cfg.photos, size=cfg.photo_size, seed=cfg.seed + 1,
                                       style="photo", format="images", scenes_per_task=16), progress=False)

    if cfg.checkpoint:
        teacher, encoder, input_size = cfg.checkpoint, cfg.encoder, 518
        _log(f"2/3 teacher: {teacher} ({encoder}), no training")
    else:
        teacher, encoder, input_size = storage.join(out, "teacher", "tiny_teacher.pth"), "tiny", cfg.scene_size
        _log(f"2/3 training a tiny teacher on {cfg.train_scenes} synthetic scenes "
             f"({cfg.train_steps} steps, CPU)")
        report["teacher"] = train_tiny_teacher(cfg, storage.join(syn_dir, "shards"), teacher)
        b, a = report["teacher"]["before"], report["teacher"]["after"]
        _log(f"held-out synthetic scenes, zero-shot protocol: AbsRel {b['abs_rel']:.3f} -> {a['abs_rel']:.3f}, "
             f"delta1 {b['d1']:.3f} -> {a['d1']:.3f}")

    _log("3/3 pseudo-labelling the photo bucket with Ray Data")
    summary = run_pseudo_label(PseudoLabelConfig(
        input=storage.join(bucket, "images"), output=storage.join(out, "pseudo_labels"), checkpoint=teacher,
        encoder=encoder, input_size=input_size, batch_size=8, partition_size=8, samples=8),
        log=_log)
    report["pseudo_label"] = {k: summary[k] for k in ("images_seen", "labelled", "skipped", "skipped_by_reason")}
    report["pseudo_label"]["images_per_s"] = summary["this_run"]["images_per_s"]
    storage.write_bytes(storage.join(out, "demo_report.json"), json.dumps(report, indent=2).encode())
    _log(f"labels: {storage.join(out, 'pseudo_labels', 'labels')}  pictures: "
         f"{storage.join(out, 'pseudo_labels', 'samples')}  report: {storage.join(out, 'demo_report.json')}")
    return report


if __name__ == "__main__":
    main()
