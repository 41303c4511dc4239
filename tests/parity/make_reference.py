"""Compute parity reference outputs with the OFFICIAL Depth Anything V2 code.

Run once, by hand, with a checkout of https://github.com/DepthAnything/Depth-Anything-V2
(no official code or weights are committed here; only the small output
tensors this script writes to ``tests/parity/reference.npz`` and the key
layout to ``tests/parity/released_layout.json``):

    .venv/bin/python tests/parity/make_reference.py --official /path/to/Depth-Anything-V2

(with ``opencv-python-headless`` importable, e.g. installed with
``pip install --target /tmp/cv2lib`` and ``PYTHONPATH=/tmp/cv2lib``, it also
records the official end-to-end ``infer_image`` output; OpenCV is not a
dependency of this project.)

Weights are filled deterministically from key names and shapes
(``tests/parity_weights.py``); inputs come from ``parity_input``. Outputs are
stored subsampled every 4th pixel in each direction to keep the file small.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from parity_weights import fill_state_dict, parity_image_uint8, parity_input  # noqa: E402

# (name, encoder, metric, height, width)
CASES = [
    ("vits_518", "vits", False, 518, 518),
    ("vits_392x700", "vits", False, 392, 700),
    ("vits_metric_518", "vits", True, 518, 518),
    ("vitb_518", "vitb", False, 518, 518),
    ("vitb_392x700", "vitb", False, 392, 700),
    ("vitl_266x378", "vitl", False, 266, 378),
]
FEATURES = {"vits": 64, "vitb": 128, "vitl": 256, "vitg": 384}
OUT_CHANNELS = {"vits": [48, 96, 192, 384], "vitb": [96, 192, 384, 768],
                "vitl": [256, 512, 1024, 1024], "vitg": [1536, 1536, 1536, 1536]}
STRIDE = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of DepthAnything/Depth-Anything-V2")
    args = ap.parse_args()
    try:
        import cv2  # noqa: F401  (real OpenCV: also computes the end-to-end infer_image reference)
        have_cv2 = True
    except ImportError:  # forward() alone does not need OpenCV
        cv2 = types.ModuleType("cv2")
        cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_NEAREST = 3, 2, 0
        sys.modules["cv2"] = cv2
        have_cv2 = False
    sys.path.insert(0, str(Path(args.official)))
    from depth_anything_v2.dpt import DepthAnythingV2 as Relative  # noqa: E402
    import importlib
    import importlib.util

    # The metric package imports its own relative modules; load it as a package.
    pkg_spec = importlib.util.spec_from_file_location(
        "metric_depth_anything_v2", Path(args.official) / "metric_depth/depth_anything_v2/__init__.py",
        submodule_search_locations=[str(Path(args.official) / "metric_depth/depth_anything_v2")])
    pkg = importlib.util.module_from_spec(pkg_spec)
    sys.modules["metric_depth_anything_v2"] = pkg
    metric_dpt = importlib.import_module("metric_depth_anything_v2.dpt")
    Metric = metric_dpt.DepthAnythingV2

    torch.set_grad_enabled(False)
    outputs: dict[str, np.ndarray] = {}
    for name, enc, metric, h, w in CASES:
        kw = dict(encoder=enc, features=FEATURES[enc], out_channels=OUT_CHANNELS[enc])
        model = Metric(**kw, max_depth=20.0) if metric else Relative(**kw)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(fill_state_dict(shapes), strict=True)
        out = model.eval()(parity_input(h, w))[0].numpy()
        outputs[name] = out[::STRIDE, ::STRIDE].copy()
        outputs[name + "_mean"] = np.array(out.mean(), dtype=np.float64)
        print(name, out.shape, float(out.mean()), float(out.std()), float((out > 0).mean()))

    if have_cv2:
        # The whole official infer_image (cv2 bicubic resize, normalisation, forward,
        # resize back) on a uint8 BGR image of an odd size.
        kw = dict(encoder="vits", features=FEATURES["vits"], out_channels=OUT_CHANNELS["vits"])
        model = Relative(**kw)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(fill_state_dict(shapes), strict=True)
        rgb = parity_image_uint8(301, 457)
        depth = model.eval().infer_image(np.ascontiguousarray(rgb[:, :, ::-1]), 518)
        outputs["infer_vits_301x457"] = depth[::STRIDE, ::STRIDE].astype(np.float32).copy()
        print("infer_image", depth.shape, float(depth.mean()))
    else:
        print("OpenCV missing: infer_vits_301x457 not computed")

    # ViT-G encoder with 2 blocks: checks the SwiGLU key mapping and math cheaply.
    from functools import partial

    from depth_anything_v2.dinov2 import Block, DinoVisionTransformer, MemEffAttention

    g = DinoVisionTransformer(  # vit_giant2's settings with depth 2
        img_size=518, patch_size=14, embed_dim=1536, depth=2, num_heads=24, mlp_ratio=4,
        block_fn=partial(Block, attn_class=MemEffAttention), init_values=1.0, ffn_layer="swiglufused",
        block_chunks=0, num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1).eval()
    shapes = {"pretrained." + k: tuple(v.shape) for k, v in g.state_dict().items()}
    g.load_state_dict({k[len("pretrained."):]: v for k, v in fill_state_dict(shapes).items()}, strict=True)
    feats = g.get_intermediate_layers(parity_input(98, 140), [0, 1], return_class_token=True)
    outputs["vitg2_98x140_tokens"] = feats[1][0][0].numpy()[::STRIDE].copy()
    outputs["vitg2_98x140_cls"] = feats[1][1][0].numpy().copy()

    np.savez_compressed(HERE / "reference.npz", **outputs)

    layout = {}
    for enc in ("vits", "vitb", "vitl", "vitg"):
        for metric in (False, True):
            kw = dict(encoder=enc, features=FEATURES[enc], out_channels=OUT_CHANNELS[enc])
            model = Metric(**kw) if metric else Relative(**kw)
            layout[f"{enc}{'_metric' if metric else ''}"] = {k: list(v.shape) for k, v in model.state_dict().items()}
            del model
    (HERE / "released_layout.json").write_text(json.dumps(layout, sort_keys=True))
    print("wrote", HERE / "reference.npz", HERE / "released_layout.json")


if __name__ == "__main__":
    main()
