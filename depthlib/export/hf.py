"""The project's Depth Anything V2 as a Hugging Face ``transformers`` model folder.

``DepthAnythingForDepthEstimation`` (transformers) holds the same network
under other names: a ``Dinov2Backbone`` (``backbone.*``), the DPT
reassemble/fusion stages (``neck.*``) and the output convolutions
(``head.*``). :func:`to_hf_state` renames ``DepthAnythingV2.state_dict()``
by rule (attention's fused ``qkv`` split into ``q/k/v_proj``; ViT-G's packed
SwiGLU ``fc1`` split into ``gate_proj``/``up_proj``), and :func:`check_keys`
compares the result with the transformers model's own keys and shapes in
both directions, naming every difference; the weights are then loaded with
``strict=True``. Nothing is ever loaded non-strictly.

What transformers does differently (measured in tests/test_export.py and the
README): its DINOv2 resizes position embeddings to the patch grid by size,
while the released Depth Anything V2 code (and this project) resizes with
DINOv2's old ``scale_factor = (grid + 0.1) / 37``. At the 518 x 518
pretraining grid no resizing happens and the outputs agree to float
rounding; at other sizes they differ by the resampling alone.

Imports ``transformers`` lazily: install ``depthlib[export]``.
"""

from __future__ import annotations

import re

import torch

from depthlib.models.depth_anything import DepthAnythingV2
from depthlib.models.specs import PATCH_SIZE, PRETRAIN_GRID, get_spec
from depthlib.transforms import IMAGENET_MEAN, IMAGENET_STD

# The released preprocessing (depthlib.transforms) as DPTImageProcessor settings.
INPUT_SIZE = 518


def hf_config(encoder: str, metric: bool = False, max_depth: float = 20.0):
    """A ``DepthAnythingConfig`` for a project model of size ``encoder``.

    Every number comes from ``MODEL_SPECS`` (the timm constructor's sizes are
    read from a model built on the meta device, so the table stays the one
    source). Relative models keep ``max_depth=1`` (transformers multiplies
    the ReLU output by it); metric ones carry theirs.
    """
    from transformers import DepthAnythingConfig, Dinov2Config

    spec = get_spec(encoder)
    with torch.device("meta"):
        vit = DepthAnythingV2(encoder).pretrained
    block = vit.blocks[0]
    dim = vit.embed_dim
    hidden = block.mlp.fc1.out_features // (2 if spec.swiglu else 1)
    # transformers derives the MLP width from an integer mlp_ratio (SwiGLU: 2/3 of it, rounded up to 8).
    mlp_ratio = 4
    want = (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8 if spec.swiglu else dim * mlp_ratio
    if want != hidden:
        raise ValueError(f"{encoder}: MLP width {hidden} is not what transformers builds from mlp_ratio 4 ({want})")
    backbone = Dinov2Config(
        hidden_size=dim, num_hidden_layers=len(vit.blocks), num_attention_heads=block.attn.num_heads,
        mlp_ratio=mlp_ratio, use_swiglu_ffn=spec.swiglu, layer_norm_eps=block.norm1.eps, qkv_bias=True,
        image_size=PRETRAIN_GRID * PATCH_SIZE, patch_size=PATCH_SIZE,
        # stage k is the output of block k-1 (stage 0 is the embeddings)
        out_indices=[i + 1 for i in spec.layers], apply_layernorm=True, reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH_SIZE, reassemble_hidden_size=dim,
        reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=list(spec.out_channels),
        fusion_hidden_size=spec.features, head_in_index=-1, head_hidden_size=32,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=_config_number(max_depth) if metric else 1,
        architectures=["DepthAnythingForDepthEstimation"],
    )


def _config_number(x: float) -> int | float:
    """``max_depth`` as transformers' config declares it (an int; a fractional value stays a float)."""
    return int(x) if float(x).is_integer() else float(x)


def image_processor_config() -> dict:
    """``preprocessor_config.json`` of the released preprocessing: shorter side to 518 with the
    aspect kept, sides multiples of 14, bicubic, ImageNet mean and std (as the official
    Depth-Anything-V2 model cards on the Hub)."""
    return {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True, "size": {"height": INPUT_SIZE, "width": INPUT_SIZE},
        "keep_aspect_ratio": True, "ensure_multiple_of": PATCH_SIZE, "resample": 3,  # PIL.Image.BICUBIC
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "do_pad": False,
    }


def _fusion_index(k: int) -> int:
    """refinenet4 (deepest, no skip input) is transformers' first fusion layer."""
    return 4 - k


_BLOCK = re.compile(r"^pretrained\.blocks\.(\d+)\.(.+)$")
_BLOCK_RULES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
}
_FIXED = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
    "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
    "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
    "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
    "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
    "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
    "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
}
_HEAD_RULES = [
    (re.compile(r"^depth_head\.projects\.(\d)\.(weight|bias)$"), r"neck.reassemble_stage.layers.\1.projection.\2"),
    (re.compile(r"^depth_head\.resize_layers\.(\d)\.(weight|bias)$"), r"neck.reassemble_stage.layers.\1.resize.\2"),
    (re.compile(r"^depth_head\.scratch\.layer(\d)_rn\.weight$"), lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (re.compile(r"^depth_head\.scratch\.refinenet(\d)\.out_conv\.(weight|bias)$"),
     lambda m: f"neck.fusion_stage.layers.{_fusion_index(int(m[1]))}.projection.{m[2]}"),
    (re.compile(r"^depth_head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(weight|bias)$"),
     lambda m: f"neck.fusion_stage.layers.{_fusion_index(int(m[1]))}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
]


class KeyMappingError(ValueError):
    """A state dict that does not map one-to-one onto the other side's keys (names listed)."""


def to_hf_state(state: dict[str, torch.Tensor], encoder: str) -> dict[str, torch.Tensor]:
    """``DepthAnythingV2.state_dict()`` -> ``DepthAnythingForDepthEstimation`` state dict.

    Every source key must match exactly one rule; an unknown key is an error
    naming it (a source key is never dropped silently)."""
    swiglu = get_spec(encoder).swiglu
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key in _FIXED:
            out[_FIXED[key]] = value
            continue
        m = _BLOCK.match(key)
        if m:
            prefix, rest = f"backbone.encoder.layer.{m[1]}.", m[2]
            if rest in _BLOCK_RULES:
                out[prefix + _BLOCK_RULES[rest]] = value
            elif rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.{name}.{kind}"] = part
            elif rest.startswith("mlp.fc1.") and swiglu:  # packed [gate; up], timm's SwiGLUPacked (gate first)
                kind = rest.rsplit(".", 1)[1]
                gate, up = value.chunk(2, dim=0)
                out[f"{prefix}mlp.gate_proj.{kind}"], out[f"{prefix}mlp.up_proj.{kind}"] = gate, up
            elif rest.startswith("mlp.fc2.") and swiglu:
                out[f"{prefix}mlp.down_proj.{rest.rsplit('.', 1)[1]}"] = value
            elif rest.startswith(("mlp.fc1.", "mlp.fc2.")):
                out[prefix + rest] = value
            else:
                unknown.append(key)
            continue
        for pattern, repl in _HEAD_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyMappingError(f"no transformers name for {len(unknown)} key(s): {', '.join(sorted(unknown)[:8])}")
    return {k: v.contiguous() for k, v in out.items()}


def check_keys(mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """Fail naming every key ``mapped`` lacks, every key it has in excess and every shape that differs."""
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    shaped = sorted(f"{k}: {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(mapped) & set(expected) if mapped[k].shape != expected[k].shape)
    if missing or extra or shaped:
        lines = [f"{what}: the mapped weights do not fit the transformers model:"]
        for label, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", shaped)):
            if items:
                lines.append(f"  {label} ({len(items)}): {', '.join(items[:8])}"
                             + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""))
        raise KeyMappingError("\n".join(lines))


def quiet_transformers() -> None:
    """No per-file progress bars from transformers in job logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def to_hf_model(model: DepthAnythingV2):
    """A ``DepthAnythingForDepthEstimation`` (eval, float32) holding ``model``'s weights, loaded strictly."""
    from transformers import DepthAnythingForDepthEstimation

    quiet_transformers()

    config = hf_config(model.encoder, model.metric, model.max_depth)
    with torch.device("meta"):  # no random init of weights about to be replaced
        skeleton = DepthAnythingForDepthEstimation(config)
    mapped = to_hf_state({k: v.detach().float() for k, v in model.state_dict().items()}, model.encoder)
    check_keys(mapped, skeleton.state_dict(), f"{model.encoder} {'metric' if model.metric else 'relative'}")
    hf = skeleton.to_empty(device="cpu")
    hf.load_state_dict(mapped, strict=True, assign=True)
    return hf.eval()


def save_hf_folder(model: DepthAnythingV2, directory: str, card: str | None = None) -> list[str]:
    """Write ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` (and ``README.md``
    when ``card`` is given) into the local ``directory``; returns the file names written."""
    import json
    import os

    hf = to_hf_model(model)
    hf.save_pretrained(directory, safe_serialization=True)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(image_processor_config(), f, indent=2, sort_keys=True)
    if card is not None:
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write(card)
    return sorted(os.listdir(directory))
