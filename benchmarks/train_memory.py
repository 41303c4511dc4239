"""Memory of one training step per GPU, with and without activation checkpointing.

    .venv/bin/python benchmarks/train_memory.py --device cuda --encoder vitg --crop 518 --batch-size 4
    .venv/bin/python benchmarks/train_memory.py            # CPU smoke run: tiny, 126 px
    .venv/bin/python benchmarks/train_memory.py --table    # largest batch per encoder and GPU, projected

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

``--table`` projects, without a GPU, the largest batch per GPU for each encoder
on 80 GB and 141 GB GPUs, with and without activation checkpointing, from a
memory model fitted to the peaks measured on an H200 (``MEASURED``):

    peak(encoder, batch) = static + batch x k x width x depth x tokens

static = 16 bytes per parameter (fp32 weights, gradients, Adam's two moments)
plus, for a student, 4 bytes per parameter of the frozen encoder; tokens =
(crop / 14)^2 + 1; one k per setting (plain, activation checkpointing), least
squares through the measured points. A GPU's budget is 90% of its memory
(CUDA context, allocator fragmentation, NCCL buffers take the rest).
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

# Peaks measured on one H200 (this script, --device cuda, 518 px, bf16), GiB:
# (encoder, student, batch) -> (plain, activation checkpointing).
MEASURED = {("vitl", False, 8): (18.2, 9.1), ("vitg", True, 4): (38.0, 27.4)}
# GPU memory as torch reports it (total_memory), GiB: A100/H100 80 GB and H200 141 GB.
GPUS = {"80 GB": 79.2, "141 GB": 139.7}
BUDGET = 0.9


def model_sizes(encoder: str) -> dict[str, int]:
    """Parameters of the whole model and of its encoder, width, depth (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = build_model(encoder)
    return {"params": sum(p.numel() for p in model.parameters()),
            "encoder_params": sum(p.numel() for p in model.pretrained.parameters()),
            "width": model.pretrained.embed_dim, "depth": len(model.pretrained.blocks)}


def static_gib(sizes: dict[str, int], student: bool) -> float:
    return (16 * sizes["params"] + (4 * sizes["encoder_params"] if student else 0)) / GIB


def fit_activations(crop: int = 518) -> tuple[tuple[float, float], list[str]]:
    """``k`` (GiB per image per width x depth x token) for plain and activation
    checkpointing, least squares through ``MEASURED``; and a line per point
    with the model's figure against the measured one."""
    tokens = (crop // 14) ** 2 + 1
    rows = []
    for (encoder, student, batch), peaks in MEASURED.items():
        sizes = model_sizes(encoder)
        x = batch * sizes["width"] * sizes["depth"] * tokens
        rows.append((encoder, student, batch, x, static_gib(sizes, student), peaks))
    ks = tuple(sum(x * (p[i] - st) for *_, x, st, p in rows) / sum(x * x for *_, x, _, _ in rows) for i in (0, 1))
    notes = [f"{e}{' student' if s else ''} batch {b}: model {st + ks[0] * x:.1f} / {st + ks[1] * x:.1f} GiB, "
             f"measured {p[0]} / {p[1]} GiB" for e, s, b, x, st, p in rows]
    return ks, notes


def projected_table(crop: int = 518, encoders=("vits", "vitb", "vitl", "vitg")) -> str:
    """A markdown table of the largest batch per GPU (DDP: a whole replica per GPU)."""
    ks, notes = fit_activations(crop)
    tokens = (crop // 14) ** 2 + 1
    head = [f"{gpu}, {setting}" for gpu in GPUS for setting in ("plain", "act. ckpt")]
    lines = [f"Largest batch per GPU at {crop} px, bf16 autocast, Adam, DDP (PROJECTED from the memory model "
             f"of benchmarks/train_memory.py, not measured; budget {BUDGET:.0%} of the GPU's memory)", "",
             "| encoder | params | static (teacher / student) | GiB per image (plain / ckpt) | "
             + " | ".join(head) + " |",
             "|---" * (4 + len(head)) + "|"]
    for encoder in encoders:
        sizes = model_sizes(encoder)
        per_image = [k * sizes["width"] * sizes["depth"] * tokens for k in ks]
        cells = []
        for gib in GPUS.values():
            for per in per_image:
                batches = [int((BUDGET * gib - static_gib(sizes, student)) // per) for student in (False, True)]
                cells.append(" / ".join(str(b) if b > 0 else "-" for b in batches) + " (projected)")
        lines.append(f"| {encoder} | {sizes['params'] / 1e6:.0f}M | {static_gib(sizes, False):.1f} / "
                     f"{static_gib(sizes, True):.1f} GiB | {per_image[0]:.2f} / {per_image[1]:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Cells: teacher / student (the student also holds its frozen encoder, fp32). Fit "
              f"(k plain {ks[0] * GIB:.1f} B, ckpt {ks[1] * GIB:.1f} B per image per width x depth x token) "
              "against the H200 measurements: " + "; ".join(notes) + "."]
    return "\n".join(lines)


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
    parser.add_argument("--crop", type=int, default=None, help="crop side (default 126; with --table 518)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--student", action="store_true", help="include the frozen encoder of the student stage")
    parser.add_argument("--table", action="store_true",
                        help="print the projected largest batch per encoder and GPU (no GPU needed) and exit")
    args = parser.parse_args()
    if args.table:
        print(projected_table(args.crop or 518))
        return
    args.crop = args.crop or 126
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
