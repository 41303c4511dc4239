"""How much the labelling job's `fast` preprocessing changes the labels, against the released path.

    .venv/bin/python benchmarks/preprocessing_fidelity.py [--images 12] [--encoder vits] [--input-size 518]

The labelling job's default ``--preprocessing fast`` resizes the decoded image
as uint8 (torch's uint8 bicubic kernel) and normalises on the device; its
``--reduced-decode`` decodes a JPEG at least 4x the model's size at a reduced
DCT scale (PIL ``draft``, keeping it >= 2x the model's size). The released path resizes in
float32 from the full decode. This runs one network on the same photos
through each path and reports, per image, the label difference relative to
the label's maximum (the shard codec's own tolerance is 1e-4 of it), mean
and max over pixels, then mean and worst over images:

* ``fast_vs_released``: uint8 resize vs float resize, both from the full decode
  (1-2 MP photos and 12 MP photos);
* ``draft_vs_full``: the reduced decode vs the full decode, both `fast` (12 MP);
* ``bf16_vs_fp32``: the released path in bf16 autocast vs fp32 (CPU autocast):
  the rounding every bf16 teacher adds, as a yardstick.

No trained weights can be downloaded here: the network has the parity tests'
deterministic weights (``tests/parity_weights.py``: activations in a normal
range, output following the image's structure), so the figures measure the
input change through a real ViT + DPT, not a trained teacher's sensitivity.
Inputs are photo-style renders with sensor grain, saved as JPEG (quality 92).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from depthlib.images import decode_image_reduced  # noqa: E402
from depthlib.inference import run_batch  # noqa: E402
from depthlib.models import build_model  # noqa: E402
from depthlib.models.checkpoints import load_state_strict, model_state_to_released  # noqa: E402
from depthlib.pseudo_label.stages import decode_at_least, model_input, pixels_to_model  # noqa: E402
from depthlib.synthetic import render_scene  # noqa: E402


def photo_jpeg(seed: int, height: int, width: int, grain: float = 12.0) -> bytes:
    """A photo-style render at ``height x width`` (rendered at 1/4 size and upscaled for the
    12 MP case: rendering is the slow part), with Gaussian grain, as JPEG quality 92."""
    scale = 4 if height * width > 4e6 else 1
    image = render_scene(seed=seed, height=height // scale, width=width // scale, style="photo").image
    if scale > 1:
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
    rng = np.random.default_rng(seed)
    image = np.clip(image + rng.normal(0, grain, image.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def label(model, pixels: np.ndarray, dtype: str = "fp32") -> np.ndarray:
    x = pixels_to_model(pixels[None])
    if dtype == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()[0].detach().numpy()
    return run_batch(model, x, "fp32")[0].numpy()


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean, max) over pixels of |a - b| / max|b|."""
    d = np.abs(a - b) / np.abs(b).max()
    return float(d.mean()), float(d.max())


def summarise(pairs: list[tuple[float, float]]) -> dict:
    means, maxes = zip(*pairs)
    return {"images": len(pairs), "mean_of_mean": float(np.mean(means)), "worst_mean": float(np.max(means)),
            "mean_of_max": float(np.mean(maxes)), "worst_max": float(np.max(maxes))}


def main() -> None:
    from parity_weights import fill_state_dict

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12, help="photos of each size class")
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--input-size", type=int, default=518)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_model(args.encoder).eval()
    released = model_state_to_released(model.state_dict(), model.encoder)
    load_state_strict(model, fill_state_dict({k: tuple(v.shape) for k, v in released.items()}))
    at_least = decode_at_least(args.input_size)
    out: dict = {"encoder": args.encoder, "input_size": args.input_size, "weights": "parity (deterministic)"}
    results = {"fast_vs_released_1_2mp": [], "fast_vs_released_12mp": [], "draft_vs_full_12mp": [],
               "bf16_vs_fp32_1_2mp": []}
    sizes = {"1_2mp": [(960, 1280), (1280, 960), (1080, 1920)], "12mp": [(3024, 4032), (4032, 3024)]}
    reduced_sizes = []
    for cls, shapes in sizes.items():
        for i in range(args.images):
            h, w = shapes[i % len(shapes)]
            data = photo_jpeg(100 + i, h, w)
            full, hw = decode_image_reduced(data)
            released = label(model, model_input(full, args.input_size, "released"))
            fast = label(model, model_input(full, args.input_size, "fast"))
            results[f"fast_vs_released_{cls}"].append(difference(fast, released))
            if cls == "12mp":
                reduced, hw2 = decode_image_reduced(data, at_least=at_least)
                assert hw2 == hw and reduced.shape[0] < full.shape[0], (reduced.shape, full.shape)
                reduced_sizes.append(list(reduced.shape[:2]))
                drafted = label(model, model_input(reduced, args.input_size, "fast", hw))
                results["draft_vs_full_12mp"].append(difference(drafted, fast))
            elif i < 4:
                bf16 = label(model, model_input(full, args.input_size, "released"), "bf16")
                results["bf16_vs_fp32_1_2mp"].append(difference(bf16, released))
    out.update({k: summarise(v) for k, v in results.items()})
    out["reduced_decode_sizes_12mp"] = sorted({tuple(s) for s in reduced_sizes})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
