"""How fine must a depth map be to beat the layout prior? (issue #23)

For each held-out set of a finished ``make demo`` directory, scores the true
disparity itself, averaged over a ``g x g`` grid of cells (valid pixels only)
and upsampled bilinearly, under the zero-shot protocol the demo's table uses
(per-image least-squares scale and shift in disparity, depth 0.1-100 m), next
to the set's layout prior. It answers whether a model's resolution could be
what keeps it near the prior: a ``tiny`` model at 126 px sees a 9 x 9 grid of
14-px patches, and the true map at 9 x 9 scores far below any teacher.

    .venv/bin/python benchmarks/coarse_truth_oracle.py --demo demo_output
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib import shards  # noqa: E402
from depthlib.evaluation.baselines import layout_prior_scores  # noqa: E402
from depthlib.evaluation.protocol import Protocol, score, valid_pixels  # noqa: E402


def coarse_disparity(depth: torch.Tensor, ok: torch.Tensor, grid: int) -> torch.Tensor:
    """The mean valid disparity (1/depth) of each of ``grid x grid`` cells, bilinearly
    upsampled back to ``depth``'s ``H x W``."""
    disparity = torch.where(ok, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    total = F.adaptive_avg_pool2d(disparity[None, None], grid)
    share = F.adaptive_avg_pool2d(ok[None, None].float(), grid)
    cells = total / share.clamp(min=1e-6)
    return F.interpolate(cells, size=tuple(depth.shape), mode="bilinear", align_corners=False)[0, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a finished make-demo directory")
    ap.add_argument("--sets", nargs="+", default=["photo", "synthetic"])
    ap.add_argument("--grids", type=int, nargs="+", default=[2, 3, 5, 9, 18, 36])
    args = ap.parse_args()
    protocol = Protocol(0.1, 100.0, "disparity")
    for name in args.sets:
        samples = [shards.decode_sample(row)
                   for uri in shards.list_shards(f"{args.demo.rstrip('/')}/heldout/{name}/shards")
                   for row in shards.read_shard(uri).to_pylist()]
        prior = layout_prior_scores([s.depth for s in samples], [s.valid for s in samples], protocol)
        print(f"\n{name}: {len(samples)} images of {samples[0].depth.shape}; layout prior AbsRel {prior['abs_rel']:.4f}")
        print("| true disparity on a grid of | AbsRel | / layout prior |\n|---|---|---|")
        for grid in args.grids:
            total = 0.0
            for s in samples:
                depth = torch.from_numpy(np.asarray(s.depth, np.float32))
                mask = torch.from_numpy(s.valid)
                ok = valid_pixels(depth, mask, protocol)
                pred = coarse_disparity(depth, ok, grid)
                total += float(score(pred[None], depth[None], mask[None], protocol)["abs_rel"][0])
            mean = total / len(samples)
            print(f"| {grid} x {grid} | {mean:.4f} | {mean / prior['abs_rel']:.3f} |")


if __name__ == "__main__":
    main()
