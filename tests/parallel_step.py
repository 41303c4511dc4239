"""Run by ``test_training_parallel.py``, one process per worker: a few optimiser
steps of the training loop's ``optimizer_step`` on fixed micro batches, then the
full model state written to ``--out`` (by rank 0).

``--mode single``: one process that sees every worker's micro batches of a step
as its own accumulated micro batches. ``--mode ddp`` / ``fsdp``: ``WORLD_SIZE``
processes (gloo; ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from the
environment), each with its own share. The same effective batch either way, so
the weights must agree.

``--variants``: ``eager`` (torch's ``foreach`` Adam) and/or ``compiled`` (the
encoder blocks compiled as the training loop's ``--compile`` does, and the fused
Adam kernel), each from scratch in the same process; the output maps
``(variant, grad_clip)`` to the run's result.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib.models import build_model  # noqa: E402
from depthlib.training.objectives import RelativeObjective  # noqa: E402
from depthlib.training.optim import make_optimizer  # noqa: E402
from depthlib.training.parallel import compile_model, optimizer_step, wrap_for_workers  # noqa: E402

CROP, BATCH = 28, 2


def micro_batch(step: int, rank: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Worker ``rank``'s micro batch ``micro`` of optimiser step ``step``: the same on every run."""
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    images = torch.randn(BATCH, 3, CROP, CROP, generator=g)
    target = torch.rand(BATCH, CROP, CROP, generator=g) + 0.05  # disparity
    mask = torch.rand(BATCH, CROP, CROP, generator=g) > 0.1
    region = torch.zeros(BATCH, CROP, CROP, dtype=torch.uint8)
    region[0, : CROP // 2, : CROP // 2] = 1  # a CutMix box in the first image
    return images, {"target": target, "mask": mask, "region": region}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("single", "ddp", "fsdp"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--variants", nargs="+", choices=("eager", "compiled"), default=["eager"])
    ap.add_argument("--grad-clip", type=float, nargs="+", default=[0.05], help="one run from scratch per value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank = 0
    if args.mode != "single":
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        assert dist.get_world_size() == args.workers
    results = {(variant, clip): train(args, clip, rank, variant == "compiled")
               for variant in args.variants for clip in args.grad_clip}
    if rank == 0:
        torch.save(results, args.out)
    if args.mode != "single":
        dist.barrier()
        dist.destroy_process_group()


def train(args: argparse.Namespace, grad_clip: float, rank: int, compiled: bool) -> dict:
    """``--steps`` optimiser steps from the same initial weights; the first step's
    gradient and weights, the final weights and each step's mean loss.
    ``compiled``: compiled encoder blocks and fused Adam, else eager and ``foreach``."""
    torch.manual_seed(0)  # the same initial weights in every process
    model = build_model("tiny")
    frozen = copy.deepcopy(model.pretrained)  # the student's feature alignment, against its start
    objective = RelativeObjective(trim=0.1, frozen_encoder=frozen, feature_layer=3)
    model.pretrained.grad_checkpointing = args.activation_checkpointing
    if compiled:
        compile_model(model)
    wrapped = wrap_for_workers(model, args.mode == "fsdp", torch.device("cpu"))
    optimizer = make_optimizer(wrapped, "adam", 1e-3, 10.0, 0.0, fused=compiled)
    assert optimizer.defaults["fused"] == compiled
    losses, first = [], {}
    for step in range(args.steps):
        if args.mode == "single":
            micro = [micro_batch(step, r, m) for r in range(args.workers) for m in range(args.grad_accum)]
            accum = args.workers * args.grad_accum
        else:
            micro = [micro_batch(step, rank, m) for m in range(args.grad_accum)]
            accum = args.grad_accum
        terms = optimizer_step(wrapped, objective, optimizer, micro, accum, grad_clip=grad_clip)
        loss = torch.tensor(sum(t["loss"] for t in terms) / len(terms), dtype=torch.float64)
        if args.mode != "single":  # the mean over every worker's micro batches
            dist.all_reduce(loss)
            loss /= args.workers
        losses.append(float(loss))
        if step == 0:  # the (clipped) gradient the first step applied, and its weights
            first = {"grads": {n: _full(p.grad) for n, p in model.named_parameters() if p.grad is not None},
                     "state": full_state(wrapped, args.mode)}
    from torch._dynamo.utils import counters

    return {"state": full_state(wrapped, args.mode), "losses": losses, "first": first,
            "graphs": counters["stats"]["unique_graphs"]}  # compiled so far in this process


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor on CPU, gathered from the workers' shards if FSDP2 sharded it (a collective)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def full_state(model: torch.nn.Module, mode: str) -> dict[str, torch.Tensor]:
    if mode == "single":
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in state.items()}

if __name__ == "__main__":
    main()
