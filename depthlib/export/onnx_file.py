"""The project's Depth Anything V2 as one ONNX file with dynamic batch, height and width.

Exported with ``torch.onnx.export(dynamo=True)`` (torch.export, then
onnxscript) from :class:`TraceableDepthAnything`, a forward that reuses the
model's own modules but has no Python branches on tensor sizes, which
torch.export would otherwise fix to the example input's shape:

* DINOv2's position embeddings are resized with the released code's rule
  (bicubic, ``scale_factor = (grid + 0.1) / 37``, none at the 37 x 37 grid)
  written as two small interpolation matrices built from the grid size, so
  the graph holds the rule for every size instead of one traced size;
* the DPT head's bilinear upsampling is called directly (the project's
  batch-slicing guard for huge CUDA outputs is a shape branch).

Input ``image``: ``B x 3 x H x W`` float32, ImageNet-normalised, H and W
multiples of 14 (the released preprocessing: ``depthlib.transforms``);
output ``depth``: ``B x H x W`` (disparity, or metres for a metric model).

Imports ``onnx``/``onnxscript``/``onnxruntime`` lazily: install ``depthlib[export]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from depthlib.models.depth_anything import DepthAnythingV2
from depthlib.models.specs import PATCH_SIZE

OPSET = 18  # ONNX Runtime >= 1.14 and TensorRT >= 8.6 run opset 18
INPUT_NAME, OUTPUT_NAME = "image", "depth"
SINGLE_FILE_BYTES = 1_800_000_000  # below protobuf's 2 GiB message limit, with room for the graph
_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic kernel


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution weights of the 4 taps around each fractional offset ``t`` (``N`` -> ``N x 4``)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def bicubic_matrix(out_size, in_size: int, scale: torch.Tensor) -> torch.Tensor:
    """``out x in`` matrix of ``F.interpolate(mode="bicubic", align_corners=False)`` along one axis
    with output coordinate ``(i + 0.5) / scale - 0.5`` and edge-clamped taps, as PyTorch computes it.
    ``out_size`` may be a symbolic size (torch.export), ``scale`` a 0-d tensor."""
    dst = torch.arange(out_size, dtype=torch.float32)
    src = (dst + 0.5) / scale - 0.5
    base = torch.floor(src)
    w = _cubic_weights(src - base)  # N x 4
    taps = (base.long()[:, None] + torch.arange(-1, 3)[None, :]).clamp(0, in_size - 1)  # N x 4
    onehot = F.one_hot(taps, in_size).to(torch.float32)  # N x 4 x in
    return (w[:, :, None] * onehot).sum(dim=1)


class TraceableDepthAnything(nn.Module):
    """``DepthAnythingV2.forward`` without size branches (same weights, same math)."""

    def __init__(self, model: DepthAnythingV2):
        super().__init__()
        self.model = model

    def _pos_embed(self, grid_h, grid_w) -> torch.Tensor:
        enc = self.model.pretrained
        pe = enc.pos_embed.float()
        n = pe.shape[1] - 1
        side = int(round(n ** 0.5))
        dim = pe.shape[-1]
        # The grid sizes as 0-d tensors taken from aranges (not torch.tensor(SymInt), which
        # torch.export turns into data-dependent sizes).
        gh = torch.arange(grid_h, dtype=torch.float32)[-1] + 1
        gw = torch.arange(grid_w, dtype=torch.float32)[-1] + 1
        # The released rule: no resampling at the pretraining grid, else scale (grid + 0.1) / side.
        # Scale 1 at the pretraining grid makes both matrices identities (taps at exact integers).
        same = (gh == side) & (gw == side)
        one = torch.ones((), dtype=torch.float32)
        mh = bicubic_matrix(grid_h, side, torch.where(same, one, (gh + 0.1) / side))  # gh x side
        mw = bicubic_matrix(grid_w, side, torch.where(same, one, (gw + 0.1) / side))  # gw x side
        patch = pe[0, 1:].reshape(side, side, dim)
        patch = torch.einsum("hi,ijc,wj->hwc", mh, patch, mw).reshape(1, -1, dim)
        return torch.cat([pe[:, :1], patch], dim=1).to(enc.pos_embed.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m, enc = self.model, self.model.pretrained
        b, h, w = image.shape[0], image.shape[-2], image.shape[-1]
        gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
        t = enc.patch_embed(image).reshape(b, gh * gw, enc.embed_dim)
        t = torch.cat([enc.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self._pos_embed(gh, gw)
        feats = {}
        for i, blk in enumerate(enc.blocks[:max(m.layers) + 1]):
            t = blk(t)
            if i in m.layers:
                feats[i] = enc.norm(t)[:, 1:]
        return self._head([feats[i] for i in m.layers], gh, gw)

    def _head(self, tokens: list[torch.Tensor], gh, gw) -> torch.Tensor:
        head, m = self.model.depth_head, self.model
        maps = []
        for i, x in enumerate(tokens):
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], gh, gw)
            maps.append(head.resize_layers[i](head.projects[i](x)))
        s = head.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        p4 = _fuse(s.refinenet4, l4, None, l3.shape[2:])
        p3 = _fuse(s.refinenet3, p4, l3, l2.shape[2:])
        p2 = _fuse(s.refinenet2, p3, l2, l1.shape[2:])
        p1 = _fuse(s.refinenet1, p2, l1, (2 * l1.shape[2], 2 * l1.shape[3]))
        out = s.output_conv1(p1)
        out = F.interpolate(out, size=(gh * PATCH_SIZE, gw * PATCH_SIZE), mode="bilinear", align_corners=True)
        out = s.output_conv2(out).squeeze(1)
        return out * m.max_depth if m.metric else out


def _fuse(block, x, skip, size):
    """``FusionBlock.forward`` with a plain ``F.interpolate``."""
    if skip is not None:
        x = x + block.resConfUnit1(skip)
    x = block.resConfUnit2(x)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return block.out_conv(x)


def export_onnx(model: DepthAnythingV2, path: str, example_size: tuple[int, int] = (518, 518),
                max_batch: int = 1024, max_grid: int = 512) -> None:
    """Write ``model`` (fp32) as an ONNX file at the local ``path`` with dynamic batch and
    height/width of ``14 x k`` pixels (k from 2 to ``max_grid``), opset ``OPSET``, weights inside."""
    from torch.export import Dim

    model = model.float().eval()
    wrapped = TraceableDepthAnything(model).eval()
    gh, gw = Dim("grid_h", min=2, max=max_grid), Dim("grid_w", min=2, max=max_grid)
    batch = Dim("batch", min=1, max=max_batch)
    example = torch.zeros(2, 3, *example_size)
    dynamic = {"image": {0: batch, 2: PATCH_SIZE * gh, 3: PATCH_SIZE * gw}}
    with torch.no_grad():
        # torch.export first, then the ONNX translation of that program (about half the time
        # of handing the module to torch.onnx.export, which tries several capture strategies).
        exported = torch.export.export(wrapped, (example,), dynamic_shapes=dynamic)
        program = torch.onnx.export(exported, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    # One file up to protobuf's 2 GB limit; larger models (ViT-G, 5.3 GB in fp32) keep their
    # weights in "<name>.data" beside it (ONNX's external-data layout, read by ONNX Runtime).
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(path, external_data=weight_bytes > SINGLE_FILE_BYTES)


def onnx_session(path: str):
    """An ONNX Runtime CPU session of an exported file."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor):
    """``B x 3 x H x W`` normalised images -> ``B x H x W`` numpy outputs of an ONNX Runtime session."""
    import numpy as np

    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images.numpy(), dtype=np.float32)})[0]
