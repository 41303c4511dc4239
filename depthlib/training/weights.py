"""Initial and frozen weights for training, loaded strictly and without executing code.

* ``--init-from``: a released-format ``.pth`` (``pretrained.*`` + ``depth_head.*``),
  this project's ``model.pth`` (the same format), or a run directory /
  Ray Train checkpoint directory of this job (its ``model.pt``). The metric
  stage takes the encoder only (the paper fine-tunes a relative model's
  encoder with a fresh metric head).
* ``--pretrained-encoder``: the ``encoder.pth`` of this job's pretraining stage
  (``--stage pretrain``; DINOv2's layout, below), or DINOv2 weights as released by Meta
  (``dinov2_vits14_pretrain.pth``: ``cls_token, pos_embed, mask_token,
  patch_embed.*, blocks.*, norm.*``; ViT-G's MLP as ``w12``/``w3``) or timm's
  state dict of ``vit_*_patch14_dinov2`` (no ``mask_token``; ``fc1``/``fc2``).
* The frozen encoder of the student's feature alignment: either of the above.

A cluster with internet access fetches DINOv2 weights once, e.g.
``curl -O https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth``
and copies them to object storage (``aws s3 cp``); jobs then read the URI.
"""

from __future__ import annotations

import math

import torch

from depthlib import storage
from depthlib.models import DepthAnythingV2
from depthlib.models.checkpoints import load_state_dict_file, load_state_strict, released_to_model_state
from depthlib.models.encoders import DinoV2Encoder
from depthlib.models.specs import get_spec

MODEL_FILE = "model.pt"  # inside this job's checkpoints: the model state in released layout


def resolve_weights_uri(uri: str) -> str:
    """A weights file for ``uri``: the file itself, or the latest checkpoint's
    ``model.pt`` / ``model.pth`` of a run or checkpoint directory."""
    if uri.endswith((".pth", ".pt", ".bin")):
        return uri
    for name in (MODEL_FILE, "model.pth"):
        candidate = storage.join(uri, name)
        if storage.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{storage.redact(uri)}: no weights file (.pth) nor {MODEL_FILE}/model.pth in it")


def _encoder_state_from_any(state: dict[str, torch.Tensor], encoder: str, source: str) -> dict[str, torch.Tensor]:
    """DINOv2 (official or timm) or Depth Anything weights -> ``DinoV2Encoder`` state keys."""
    state = released_to_model_state(state, encoder)  # strips "module.", renames ViT-G w12/w3
    if any(k.startswith("pretrained.") for k in state):
        return {k[len("pretrained."):]: v for k, v in state.items() if k.startswith("pretrained.")}
    if "register_tokens" in state or "reg_token" in state:
        raise ValueError(f"{source}: DINOv2 with registers is not the encoder Depth Anything V2 uses")
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # a classifier, if any
    if get_spec(encoder).swiglu:
        state = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in state.items()}
    return state


def load_encoder_strict(encoder_module: DinoV2Encoder, state: dict[str, torch.Tensor], encoder: str,
                        source: str) -> None:
    """Load encoder weights strictly; a missing ``mask_token`` (timm files) stays zero (it is unused)."""
    state = _encoder_state_from_any(state, encoder, source)
    own = encoder_module.state_dict()
    state.setdefault("mask_token", own["mask_token"])
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shaped:
        raise ValueError(f"{source} does not fit a {encoder} DINOv2 encoder: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}, mis-shaped {shaped[:6]}")
    encoder_module.load_state_dict(state, strict=True)


def initialise(model: DepthAnythingV2, init_from: str | None, pretrained_encoder: str | None,
               encoder_only: bool) -> str | None:
    """Load the starting weights into ``model``; returns the URI of the weights
    its encoder came from (the default frozen encoder of a student), or None
    for a random start. ``pretrained_encoder`` is applied first, ``init_from``
    over it."""
    source = None
    if pretrained_encoder:
        uri = resolve_weights_uri(pretrained_encoder)
        load_encoder_strict(model.pretrained, load_state_dict_file(uri), model.encoder, storage.redact(uri))
        source = pretrained_encoder
    if init_from:
        uri = resolve_weights_uri(init_from)
        state = load_state_dict_file(uri)
        if encoder_only:
            load_encoder_strict(model.pretrained, state, model.encoder, storage.redact(uri))
        else:
            load_state_strict(model, state, source=storage.redact(uri))
        source = uri
    return source


def frozen_encoder(uri: str, encoder: str) -> DinoV2Encoder:
    """A frozen copy of a DINOv2 encoder from a DINOv2 or Depth Anything checkpoint."""
    module = DinoV2Encoder(get_spec(encoder))
    load_encoder_strict(module, load_state_dict_file(resolve_weights_uri(uri)), encoder, storage.redact(uri))
    return module.eval().requires_grad_(False)


def start_metric_head_at(model: DepthAnythingV2, depth: float) -> None:
    """Set the fresh metric head's last bias so its output starts at ``depth``
    metres everywhere (``sigmoid(b) * max_depth = depth``).

    With the default bias of ~0 the head starts at ``max_depth / 2`` (10 m for
    Hypersim's 20 m), and Adam moves a bias by about the learning rate per
    step, so a short fine-tune spends its steps dragging a constant towards
    the data's scale instead of learning depth."""
    if not model.metric:
        raise ValueError("start_metric_head_at needs a metric model")
    share = min(max(depth / model.max_depth, 1e-3), 1 - 1e-3)
    last = model.depth_head.scratch.output_conv2[2]
    with torch.no_grad():
        last.bias.fill_(math.log(share / (1 - share)))
