"""Does the self-supervised pretraining stage help, and does feature alignment? (issue #23)

Reads a finished ``make demo`` directory (its rendered training scenes,
held-out sets and pseudo labels) and trains, for each seed, with the demo's
recipe (``tiny_cpu``, 2 CPU workers, 126 px):

* ``pretrain``: ``--stage pretrain`` on the synthetic training images, the
  demo's unlabeled photo-style bucket or both (``--pretrain-data``;
  ``--pretrain-steps``), checkpoints kept along the way for the curve;
* teachers on the synthetic scenes: from scratch, and from the pretrained encoder
  (and, with ``--curve``, from the encoder after each listed number of pretraining steps);
* students on the demo's pseudo labels: from scratch (no alignment possible),
  from the pretrained encoder without alignment (``--frozen-encoder none``),
  and from it with alignment to it (the default, as in the paper).

Every model is scored on the demo's 64 held-out photo-style scenes by the
training loop's validation (zero-shot protocol: per-image scale and shift in
disparity, depth 0.1-100 m; the same numbers as the evaluation job), next to
the set's layout prior. Prints a table (mean, min-max over seeds) and writes
``<out>/ablation.json``.

    .venv/bin/python benchmarks/pretraining_ablation.py --demo demo_output --out /tmp/ablation --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib import storage  # noqa: E402
from depthlib.training.config import PRESETS, TrainConfig  # noqa: E402


def _final(output: str) -> dict:
    rows = [json.loads(line) for line in storage.read_bytes(storage.join(output, "metrics.jsonl")).decode().splitlines()]
    val = [r for r in rows if "val_abs_rel" in r]
    return {"abs_rel": val[-1]["val_abs_rel"], "d1": val[-1]["val_d1"], "start_abs_rel": val[0]["val_abs_rel"],
            "layout_prior": val[0].get("val_layout_prior_abs_rel"), "learned": rows[-1].get("learned")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a finished make-demo directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--pretrain-data", choices=("synthetic", "bucket", "both"), default="synthetic",
                    help="images the pretraining reads: the rendered training scenes (labels unread), the demo's "
                         "unlabeled bucket of photo-style JPEGs, or both")
    ap.add_argument("--pretrain-target", choices=("pixels", "ema_features"), default="pixels",
                    help="the pretraining objective's target (train.py --pretrain-target)")
    ap.add_argument("--steps", type=int, default=400, help="teacher and student steps")
    ap.add_argument("--curve", type=int, nargs="*", default=[],
                    help="also train a teacher from the encoder after these pretraining steps (multiples of 100)")
    ap.add_argument("--only", nargs="*", default=[], help="run only these variants (pretrain, teacher_scratch, ...)")
    ap.add_argument("--set", action="append", default=[],
                    help="SETTING=VALUE for every teacher and student run (e.g. head_lr_multiplier=3)")
    ap.add_argument("--teacher-data", nargs="+", default=["synthetic"],
                    help="the teachers' training shards: `synthetic` (the demo's rendered scenes), `street` (its "
                         "street scenes, the metric stage's data, read as relative depth, as the paper's teacher "
                         "reads Virtual KITTI 2 beside the indoor sets) or any shard prefix")
    ap.add_argument("--encoder-from", help="use the encoder.pth of this ablation output's pretrain runs "
                                           "(instead of this run's own)")
    args = ap.parse_args()

    import ray

    from depthlib.training.job import run_training

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    demo = args.demo.rstrip("/")
    synthetic, photo = f"{demo}/synthetic/shards", f"{demo}/heldout/photo/shards"
    labels = f"{demo}/pseudo_labels/labels"
    teacher_data = [{"synthetic": synthetic, "street": f"{demo}/metric_data/shards"}.get(d, d) for d in args.teacher_data]
    bucket = f"{demo}/bucket/images"  # the unlabeled photo-style JPEGs, read as images (no shards)
    base = dict(PRESETS["tiny_cpu"], workers=2, val_every=100, checkpoint_every=100, keep_checkpoints=20,
                val_data=photo, samples=2)
    import dataclasses
    import typing

    hints = typing.get_type_hints(TrainConfig)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        tp = hints[key]
        extra[key] = value if tp is str else (value.lower() == "true" if tp is bool else float(value)
                                              if tp is float else int(value) if tp is int else value)
    assert all(f in {x.name for x in dataclasses.fields(TrainConfig)} for f in extra)
    results: dict[str, list[dict]] = {}

    def run(name: str, seed: int, **kw) -> dict:
        output = f"{args.out}/{name}/seed{seed}"
        t0 = time.time()
        settings = {**base, **kw, "seed": seed, "output": output}
        if kw["stage"] != "pretrain":
            settings.update(extra)
        summary = run_training(TrainConfig(**settings), log=lambda *_: None)
        entry = {"seed": seed, "output": output, "wall_s": round(time.time() - t0, 1)}
        if kw["stage"] != "pretrain":
            entry.update(_final(output))
        else:
            entry["final"] = summary.get("final", {})
        results.setdefault(name, []).append(entry)
        print(f"{name} seed {seed}: {json.dumps({k: v for k, v in entry.items() if k != 'output'})}", flush=True)
        return entry

    wanted = lambda name: not args.only or name in args.only  # noqa: E731
    for seed in args.seeds:
        pre = f"{args.encoder_from or args.out}/pretrain/seed{seed}"
        encoder = f"{pre}/encoder.pth"
        if wanted("pretrain") and not args.encoder_from:
            pretrain_data = {"synthetic": [synthetic], "bucket": [bucket], "both": [synthetic, bucket]}[args.pretrain_data]
            run("pretrain", seed, stage="pretrain", data=pretrain_data, steps=args.pretrain_steps,
                pretrain_target=args.pretrain_target)
        if wanted("teacher_scratch"):
            run("teacher_scratch", seed, stage="teacher", data=teacher_data, steps=args.steps)
        if wanted("teacher_pretrained"):
            run("teacher_pretrained", seed, stage="teacher", data=teacher_data, steps=args.steps,
                pretrained_encoder=encoder)
        for k in args.curve:
            if wanted(f"teacher_pretrain{k}") and k != args.pretrain_steps:
                ckpt = f"{pre}/ray_train/step-{k:08d}/model.pt"
                run(f"teacher_pretrain{k}", seed, stage="teacher", data=teacher_data, steps=args.steps,
                    pretrained_encoder=ckpt)
        if wanted("student_scratch"):
            run("student_scratch", seed, stage="student", data=[labels], steps=args.steps)
        if wanted("student_pretrained_no_align"):
            run("student_pretrained_no_align", seed, stage="student", data=[labels], steps=args.steps,
                pretrained_encoder=encoder, frozen_encoder="none")
        if wanted("student_pretrained_align"):
            run("student_pretrained_align", seed, stage="student", data=[labels], steps=args.steps,
                pretrained_encoder=encoder)
    storage.write_bytes(f"{args.out}/ablation.json", json.dumps(results, indent=1).encode())
    print("\n| run | seeds | photo-style AbsRel mean (min-max) | delta1 mean | layout prior | / prior |")
    print("|---|---|---|---|---|---|")
    for name, entries in results.items():
        if name == "pretrain":
            continue
        a = [e["abs_rel"] for e in entries]
        prior = entries[0]["layout_prior"]
        mean = sum(a) / len(a)
        print(f"| {name} | {len(a)} | {mean:.4f} ({min(a):.4f}-{max(a):.4f}) | "
              f"{sum(e['d1'] for e in entries) / len(entries):.4f} | {prior:.4f} | {mean / prior:.3f} |")


if __name__ == "__main__":
    main()
