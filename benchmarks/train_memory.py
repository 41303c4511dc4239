"""Memory of one training step per GPU, with and without activation checkpointing.

    .venv/bin/python benchmarks/train_memory.py --device cuda --encoder vitg --crop 518 --batch-size 4
    .venv/bin/python benchmarks/train_memory.py            # CPU smoke run: tiny, 126 px

One process, the training loop's own step (``depthlib.training.parallel.optimizer_step``:
the relative objective, bf16 autocast on CUDA, clipping, Adam), on random
inputs. For each setting: two steps (the first allocates Adam's state), then
the peak allocated memory of the third. ``--student`` adds the frozen encoder
of the feature-alignment loss. Prints, per setting, the bytes of weights +
gradients + Adam state (what FSDP2 divides by the number of GPUs) and the
measured peak (CUDA only: ``torch.cuda.max_memory_allocated``); the peak minus
the static part is what activations and temporaries take. FSDP2 itself needs
two or more GPUs and is not measured here: its static part per GPU is the
printed static bytes / GPUs, plus one gathered block at a time.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from depthlib.inference import autocast_for  # noqa: E402
from depthlib.models import build_model  # noqa: E402
from depthlib.models.specs import get_spec  # noqa: E402
from depthlib.training.objectives import RelativeObjective  # noqa: E402
from depthlib.training.optim import make_optimizer  # noqa: E402
from depthlib.training.parallel import optimizer_step  # noqa: E402

GIB = 2**30


def measure(encoder: str, crop: int, batch_size: int, device: torch.device, checkpointing: bool,
            student: bool) -> dict[str, float]:
    """Static bytes (weights, gradients, Adam state; the frozen encoder) and the peak of one step."""
    torch.manual_seed(0)
    model = build_model(encoder).to(device).train()
    model.pretrained.grad_checkpointing = checkpointing
    frozen = copy.deepcopy(model.pretrained).eval() if student else None
    objective = RelativeObjective(frozen_encoder=frozen, feature_layer=get_spec(encoder).layers[-1])
    optimizer = make_optimizer(model, "adam", 1e-6, 10.0, 0.0)
    autocast = autocast_for(device, "bf16")
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch_size, 3, crop, crop, generator=g).to(device)
    batch = {"target": (torch.rand(batch_size, crop, crop, generator=g) + 0.05).to(device),
             "mask": torch.ones(batch_size, crop, crop, dtype=torch.bool, device=device),
             "region": torch.zeros(batch_size, crop, crop, dtype=torch.uint8, device=device)}
    for _ in range(2):
        optimizer_step(model, objective, optimizer, [(images, batch)], 1, 1.0, autocast)
    params = sum(p.numel() for p in model.parameters())
    static = 4 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, grads, Adam's 2 moments
    frozen_bytes = sum(p.numel() * p.element_size() for p in frozen.parameters()) if frozen is not None else 0
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        optimizer_step(model, objective, optimizer, [(images, batch)], 1, 1.0, autocast)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / GIB
    else:
        optimizer_step(model, objective, optimizer, [(images, batch)], 1, 1.0, autocast)
    del model, frozen, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"params_m": params / 1e6, "static_gib": static / GIB, "frozen_gib": frozen_bytes / GIB,
            "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--crop", type=int, default=126)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--student", action="store_true", help="include the frozen encoder of the student stage")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (peak not measured)"
    print(f"{args.encoder}{' student' if args.student else ''} at {args.crop}px, batch {args.batch_size} per GPU, "
          f"bf16 autocast on CUDA, Adam: {name}")
    print(f"  {'setting':<26}{'params':>10}{'weights+grads+Adam':>21}{'frozen enc.':>13}{'peak':>10}"
          f"{'peak - static':>15}")
    for checkpointing in (False, True):
        try:
            m = measure(args.encoder, args.crop, args.batch_size, device, checkpointing, args.student)
        except torch.OutOfMemoryError:
            print(f"  {'activation ckpt' if checkpointing else 'plain':<26}out of memory")
            torch.cuda.empty_cache()
            continue
        setting = "activation checkpointing" if checkpointing else "plain"
        rest = m["peak_gib"] - m["static_gib"] - m["frozen_gib"]
        print(f"  {setting:<26}{m['params_m']:>9.1f}M{m['static_gib']:>19.2f} G{m['frozen_gib']:>11.2f} G"
              f"{m['peak_gib']:>8.2f} G{rest:>13.2f} G")


if __name__ == "__main__":
    main()
