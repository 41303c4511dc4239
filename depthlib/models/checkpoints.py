"""Released-format checkpoints: load strictly, export for the official code.

Released Depth Anything V2 files (``depth_anything_v2_vits.pth`` ... and the
metric ones) are plain state dicts with keys ``pretrained.*`` (DINOv2) and
``depth_head.*`` (DPT). Our module layout matches them except ViT-G's SwiGLU
MLP, which timm names ``mlp.fc1``/``mlp.fc2`` and DINOv2 ``mlp.w12``/``mlp.w3``;
the two filters below translate in each direction. Loading is strict and
``weights_only``: a file that does not fit names its missing, unexpected and
mis-shaped keys instead of loading half a model.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from depthlib import storage
from depthlib.models.depth_anything import DepthAnythingV2, build_model
from depthlib.models.specs import MODEL_SPECS, get_spec

_RELEASED_TO_OURS = [(re.compile(r"^(pretrained\.blocks\.\d+\.mlp)\.w12\."), r"\1.fc1."),
                     (re.compile(r"^(pretrained\.blocks\.\d+\.mlp)\.w3\."), r"\1.fc2.")]
_OURS_TO_RELEASED = [(re.compile(r"^(pretrained\.blocks\.\d+\.mlp)\.fc1\."), r"\1.w12."),
                     (re.compile(r"^(pretrained\.blocks\.\d+\.mlp)\.fc2\."), r"\1.w3.")]


def _rename(state: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for pattern, repl in rules:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def released_to_model_state(state: dict[str, torch.Tensor], encoder: str) -> dict[str, torch.Tensor]:
    """Released key layout -> ``DepthAnythingV2.state_dict()`` layout."""
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    return _rename(state, _RELEASED_TO_OURS) if get_spec(encoder).swiglu else dict(state)


def model_state_to_released(state: dict[str, torch.Tensor], encoder: str) -> dict[str, torch.Tensor]:
    """``DepthAnythingV2.state_dict()`` layout -> released key layout."""
    return _rename(state, _OURS_TO_RELEASED) if get_spec(encoder).swiglu else dict(state)


def _guess_encoder(state: dict[str, torch.Tensor]) -> str | None:
    """The encoder size whose last head projection fits the file, if any."""
    w = state.get("depth_head.projects.3.weight")
    if w is None:
        return None
    for name, spec in MODEL_SPECS.items():
        if spec.out_channels[3] == w.shape[0] and spec.features == state.get(
                "depth_head.scratch.layer1_rn.weight", w).shape[0]:
            return name
    return None


def load_state_dict_file(path_or_uri: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local path or URI, loaded with ``weights_only=True``
    (never executes code from the file). Accepts a plain state dict or one
    nested under ``"model"`` / ``"state_dict"``, or a ``.safetensors`` file
    (tensors only by format; ``depthlib.export`` writes the released layout so)."""
    data = storage.read_bytes(str(path_or_uri))
    if str(path_or_uri).lower().endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors  # installed with timm

        obj = load_safetensors(data)
    else:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("model", "state_dict"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path_or_uri}: not a state dict")
    return obj


def state_mismatch(model: DepthAnythingV2, state: dict[str, torch.Tensor], source: str = "state dict") -> str | None:
    """Why released-layout ``state`` does not fit ``model`` (every missing, unexpected and
    mis-shaped key named, and the encoder the file looks like), or None if it fits."""
    state = released_to_model_state(state, model.encoder)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or mis_shaped):
        return None

    def show(items):
        return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
    lines = [f"{source} does not fit a {model.encoder} {'metric' if model.metric else 'relative'} model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if mis_shaped:
        lines.append(f"  shape mismatches ({len(mis_shaped)}): {show(mis_shaped)}")
    guess = _guess_encoder(state)
    if guess and guess != model.encoder:
        lines.append(f"  hint: the file looks like encoder={guess!r}")
    return "\n".join(lines)


def load_state_strict(model: DepthAnythingV2, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load released-layout ``state`` into ``model``, failing with every
    missing, unexpected and mis-shaped key named."""
    problem = state_mismatch(model, state, source)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(released_to_model_state(state, model.encoder), strict=True)


def check_checkpoint(path_or_uri: str, encoder: str, metric: bool = False, flag: str = "--checkpoint") -> None:
    """Fail early, with one sentence naming the file, on a checkpoint a job could not load:
    missing (``FileNotFoundError``), not a loadable state dict, another encoder size than
    ``encoder`` (both named), or keys that do not fit (``ValueError``). Builds the model on
    the meta device, so the check costs one read of the file and no model's memory."""
    name = storage.redact(str(path_or_uri))
    if not storage.exists(str(path_or_uri)):
        raise FileNotFoundError(f"{flag} {name} does not exist")
    try:
        state = load_state_dict_file(path_or_uri)
    except Exception as e:  # noqa: BLE001 - whatever torch.load says, the file is not a checkpoint
        raise ValueError(f"{flag} {name} does not load as a checkpoint: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
    guess = _guess_encoder(state)
    if guess and guess != encoder:
        raise ValueError(f"{flag} {name} holds a {guess} model, but --encoder is {encoder}")
    with torch.device("meta"):
        model = build_model(encoder, metric=metric)
    problem = state_mismatch(model, state, f"{flag} {name}")
    if problem:
        raise ValueError(problem)


def load_released(path_or_uri: str | Path, encoder: str, metric: bool = False, max_depth: float = 20.0) -> DepthAnythingV2:
    """A model of size ``encoder`` with a released-format checkpoint loaded strictly.

    ``path_or_uri``: a local path, ``file://`` or ``s3://`` URI of a ``.pth``
    state dict with ``pretrained.*`` and ``depth_head.*`` keys. ``metric`` and
    ``max_depth`` must match the file (metric checkpoints end in a sigmoid; the
    official indoor model uses ``max_depth=20``, outdoor ``80``).
    """
    model = build_model(encoder, metric=metric, max_depth=max_depth)
    load_state_strict(model, load_state_dict_file(path_or_uri), source=str(path_or_uri))
    return model.eval()


def released_bytes(state: dict[str, torch.Tensor], encoder: str) -> bytes:
    """A ``DepthAnythingV2.state_dict()`` as the bytes of a released-format
    ``.pth`` (float32 on CPU, released key layout)."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(model_state_to_released(state, encoder), buf)
    return buf.getvalue()


def export_released(model: DepthAnythingV2, path_or_uri: str | Path) -> None:
    """Write ``model`` as a released-format state dict (float32 on CPU), loadable
    with ``load_state_dict(strict=True)`` by the official Depth-Anything-V2 code."""
    storage.write_bytes(str(path_or_uri), released_bytes(model.state_dict(), model.encoder))
