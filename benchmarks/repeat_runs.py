"""The same training command run many times: the spread of its results (issue #22).

    .venv/bin/python benchmarks/repeat_runs.py --root demo_output [--runs 20] [--steps 300] \
        [--seeds 2] [--out repeat_runs.json] [--extra cutmix=true]

Runs the student stage of ``make demo`` (``--stage student --preset tiny_cpu``,
2 workers, ``--data <root>/pseudo_labels/labels``) ``--runs`` times on one
local Ray cluster, cycling over ``--seeds`` seeds (so each seed is repeated),
and records per run: the final held-out AbsRel (``--val-data
<root>/heldout/photo/shards``), the step-0 AbsRel and the layout prior, the
learning verdict, and the diagnostics the loop logs (the largest gradient norm
before clipping, the share of dead output pixels, rows skipped). Prints the
distribution per seed and over all runs, and the runs that stand out.

Each run's output directory is kept under ``--work`` for a closer look
(``metrics.jsonl``, ``curves.png``, ``samples/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _summary(output: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(output, "metrics.jsonl"))]
    state = json.load(open(os.path.join(output, "run_state.json")))
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_abs_rel" in r]
    return {
        "final_abs_rel": val[-1]["val_abs_rel"] if val else None,
        "start_abs_rel": val[0]["val_abs_rel"] if val and val[0]["step"] == 0 else None,
        "layout_prior": rows[0].get("val_layout_prior_abs_rel"),
        "learned": (state.get("learning") or {}).get("learned"),
        "max_grad_norm": max((r.get("grad_norm", 0.0) for r in train), default=None),
        "max_pred_zero": max((r.get("pred_zero", 0.0) for r in train), default=None),
        "last_pred_zero": train[-1].get("pred_zero") if train else None,
        "last_loss": train[-1]["loss"] if train else None,
        "data_skipped": state.get("data_skipped"),
        "val_curve": [(r["step"], round(r["val_abs_rel"], 4)) for r in val],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a `make demo` output (pseudo_labels/, heldout/)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2, help="distinct --seed values, cycled over the runs")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-limit", type=int, default=32)
    p.add_argument("--extra", action="append", default=[], help="SETTING=VALUE for TrainConfig (e.g. cutmix=true)")
    p.add_argument("--work", default="/tmp/repeat_runs", help="run directories")
    p.add_argument("--out", default="repeat_runs.json")
    args = p.parse_args(argv)

    import ray

    from depthlib.pipeline.config import _parse_value
    from depthlib.training.config import PRESETS, TrainConfig
    from depthlib.training.job import run_training

    import typing
    hints = typing.get_type_hints(TrainConfig)
    extra = {}
    for item in args.extra:
        k, _, v = item.partition("=")
        extra[k] = _parse_value(v, hints[k])
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    results = []
    for i in range(args.runs):
        seed = i % args.seeds
        output = os.path.join(args.work, f"run-{i:02d}-seed{seed}")
        cfg = TrainConfig(**{**PRESETS["tiny_cpu"], "stage": "student", "workers": 2, "steps": args.steps,
                             "seed": seed, "preset": "tiny_cpu", "output": output, "val_limit": args.val_limit,
                             "data": [os.path.join(args.root, "pseudo_labels", "labels")],
                             "val_data": os.path.join(args.root, "heldout", "photo", "shards"),
                             "val_every": 100, "checkpoint_every": 100, **extra})
        t0 = time.time()
        run_training(cfg, log=lambda *_: None, start_retries=0)
        r = {"run": i, "seed": seed, "seconds": round(time.time() - t0, 1), **_summary(output)}
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "val_curve"}), flush=True)
        with open(args.out, "w") as f:
            json.dump({"settings": vars(args), "runs": results}, f, indent=1)

    finals = [r["final_abs_rel"] for r in results]
    print(f"\nfinal held-out AbsRel over {len(finals)} runs: mean {statistics.mean(finals):.4f}, "
          f"sd {statistics.pstdev(finals):.4f}, min {min(finals):.4f}, max {max(finals):.4f}")
    for seed in range(args.seeds):
        same = [r["final_abs_rel"] for r in results if r["seed"] == seed]
        if same:
            print(f"  seed {seed}: {len(same)} runs, {min(same):.4f} .. {max(same):.4f}")
    median = statistics.median(finals)
    for r in results:
        if r["final_abs_rel"] > 1.15 * median or not r["learned"]:
            print(f"  OUTLIER run {r['run']} (seed {r['seed']}): {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
