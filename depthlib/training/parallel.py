"""One model over several workers (DDP or FSDP2), and one optimiser step with
gradient accumulation: the part of the training loop whose numbers must not
depend on how the model is distributed.

Whatever the wrapping, an optimiser step applies the gradient of the mean loss
over every micro batch of every worker: each worker divides its micro-batch
losses by the number of micro batches, and DDP's all-reduce or FSDP2's
reduce-scatter averages over workers. ``tests/test_training_parallel.py``
checks that DDP, FSDP2 (with activation checkpointing) and a single process on
the same micro batches end at the same weights, and that compiling the
encoder blocks (:func:`compile_model`) with the fused Adam kernel ends where
the eager, unfused step does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

Objective = Callable[[torch.nn.Module, Tensor, dict[str, Tensor]], dict[str, Tensor]]


def is_distributed() -> bool:
    """Whether a process group of more than one worker is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def compile_model(model: torch.nn.Module, head: bool = False) -> torch.nn.Module:
    """Compile each encoder block (and with ``head`` the DPT head) in place with
    ``nn.Module.compile`` (inductor), before :func:`wrap_for_workers`.

    Per block, not the whole model: every block has the same code and shapes,
    so one graph serves them all (one compilation); DDP's gradient hooks and
    FSDP2's per-block gather/reshard hooks stay at block boundaries, outside
    the graphs, and activation checkpointing recomputes a compiled block.
    In place: parameter names and state dicts keep their keys (no ``_orig_mod.``),
    so checkpoints of compiled and eager runs are interchangeable.

    The head stays eager by default: its FLOPs are convolutions, which inductor
    hands to cuDNN anyway, and its graph takes ~2 min to compile on a CPU
    (``benchmarks/train_step.py --compile --compile-head`` measures what it
    gains on a GPU). A compiled module runs eagerly under
    ``torch.compiler.set_stance("force_eager")`` (validation does, at other
    image sizes, so it does not recompile)."""
    for block in model.pretrained.blocks:
        block.compile()
    if head:
        model.depth_head.compile()
    return model


def wrap_for_workers(model: torch.nn.Module, fsdp: bool, device: torch.device) -> torch.nn.Module:
    """``model`` as the workers train it: unchanged in a single process; else
    FSDP2 (``fully_shard`` on every encoder block, then the whole model: the
    parameters, gradients and optimiser state of each are sharded over the
    workers) or DDP (replicated, gradients all-reduced)."""
    if not is_distributed():
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.pretrained.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(model: torch.nn.Module, last_micro_step: bool) -> AbstractContextManager:
    """DDP all-reduces gradients only on the last micro batch of an accumulated
    step; FSDP2 reduce-scatters on every one (correct, a little slower)."""
    if last_micro_step or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def optimizer_step(model: torch.nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                   micro_batches: Iterable[tuple[Tensor, dict[str, Tensor]]], grad_accum: int, grad_clip: float,
                   autocast: AbstractContextManager | None = None) -> list[dict[str, float]]:
    """Zero the gradients, forward and backward each of the ``grad_accum``
    ``(images, batch)`` micro batches (images normalised ``(B, 3, H, W)``; batch
    as the objective reads it), clip the total gradient norm to ``grad_clip``
    (0: no clipping) and step the optimiser. The learning-rate schedule is the
    caller's. Returns each micro batch's loss terms as floats (with clipping,
    also ``grad_norm``: the step's total gradient norm before clipping)."""
    optimizer.zero_grad(set_to_none=True)
    terms_per_micro: list[dict[str, float]] = []
    for i, (images, batch) in enumerate(micro_batches):
        with gradient_sync(model, i == grad_accum - 1):
            with autocast or nullcontext():
                terms = objective(model, images, batch)
            (terms["loss"] / grad_accum).backward()
        terms_per_micro.append({k: float(v.detach()) for k, v in terms.items()})
    if len(terms_per_micro) != grad_accum:
        raise ValueError(f"expected {grad_accum} micro batches, got {len(terms_per_micro)}")
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
        # The norm before clipping (a blow-up that clipping hides shows here); on
        # every micro batch's terms, since callers average terms over micro batches.
        for terms in terms_per_micro:
            terms["grad_norm"] = norm
    optimizer.step()
    return terms_per_micro
