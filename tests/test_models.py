"""Model construction, checkpoint loading/export and the released preprocessing."""

import numpy as np
import pytest
import torch

from depthlib.inference import predict
from depthlib.models import build_model, export_released, load_released, load_state_dict_file
from depthlib.models.encoders import interpolate_pos_embed
from depthlib.models.specs import MODEL_SPECS
from depthlib.transforms import preprocess, resize_prediction, target_size


@pytest.mark.parametrize("encoder", sorted(MODEL_SPECS))
def test_every_size_builds_with_published_widths(encoder):
    with torch.device("meta"):
        m = build_model(encoder)
    spec = MODEL_SPECS[encoder]
    assert m.depth_head.scratch.layer1_rn.out_channels == spec.features
    assert [p.out_channels for p in m.depth_head.projects] == list(spec.out_channels)
    assert max(spec.layers) < len(m.pretrained.blocks)


def test_tiny_forward_shapes_features_and_metric_range():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 70, 98)
    rel = build_model("tiny").eval()
    with torch.no_grad():
        out, feats = rel(x, return_features=True)
    assert out.shape == (2, 70, 98) and (out >= 0).all()
    assert len(feats) == 4 and all(t.shape == (2, 5 * 7, 64) and c.shape == (2, 64) for t, c in feats)
    met = build_model("tiny", metric=True, max_depth=80.0).eval()
    with torch.no_grad():
        d = met(x)
    assert d.shape == (2, 70, 98) and (d > 0).all() and (d < 80.0).all()


def test_head_output_is_the_same_at_any_batch_size(monkeypatch):
    """Upsamplings whose output would pass the CUDA kernel's 2**31-element limit run in
    batch slices; with the limit lowered so every upsampling of the head is sliced (down
    to one sample), the output equals the unsliced one's, for a batch that does not
    divide evenly."""
    from depthlib.models import dpt

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.randn(5, 3, 70, 98)
    with torch.no_grad():
        whole = model(x)
    real = torch.nn.functional.interpolate

    def interpolations() -> tuple[list[int], torch.Tensor]:
        """Batch sizes of the interpolations in one forward pass (the sliced output)."""
        calls = []

        def counting(inp, *a, **kw):
            calls.append(inp.shape[0])
            return real(inp, *a, **kw)

        monkeypatch.setattr(dpt.F, "interpolate", counting)
        with torch.no_grad():
            out = model(x)
        monkeypatch.setattr(dpt.F, "interpolate", real)
        return calls, out

    unsliced, _ = interpolations()
    last = model.depth_head.scratch.output_conv1.out_channels * 70 * 98  # elements of one sample's last upsampling
    for limit, n_last in ((2 * last, 2), (last, 1), (1, 1)):
        monkeypatch.setattr(dpt, "MAX_INTERPOLATE_ELEMENTS", limit)
        calls, sliced = interpolations()
        slices = [n_last] * (5 // n_last) + ([5 % n_last] if 5 % n_last else [])
        assert len(calls) > len(unsliced) and calls[-len(slices):] == slices  # really sliced
        torch.testing.assert_close(sliced, whole, rtol=0, atol=0)


def test_input_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model("tiny")(torch.randn(1, 3, 70, 100))


@pytest.mark.parametrize("seed", range(5))
def test_relative_head_starts_alive(seed):
    """A fresh relative model has a non-zero output (and so a gradient) whatever the seed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        assert (build_model("tiny")(torch.randn(1, 3, 56, 56)) > 0).all()


def test_export_then_load_roundtrip(tmp_path):
    torch.manual_seed(1)
    m = build_model("tiny", metric=True, max_depth=20.0).eval()
    path = tmp_path / "m.pth"
    export_released(m, path)
    state = load_state_dict_file(path)
    assert all(k.startswith(("pretrained.", "depth_head.")) for k in state)
    assert "pretrained.mask_token" in state  # the official code loads strictly and expects it
    loaded = load_released(path, "tiny", metric=True, max_depth=20.0)
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))


def test_strict_load_names_missing_unexpected_and_shape_errors(tmp_path):
    state = build_model("tiny").state_dict()
    del state["depth_head.scratch.output_conv1.weight"]
    state["depth_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        load_released(path, "tiny")
    msg = str(e.value)
    assert "missing keys (1): depth_head.scratch.output_conv1.weight" in msg
    assert "unexpected keys (1): depth_head.extra.weight" in msg
    export_released(build_model("vits"), tmp_path / "vits.pth")
    with pytest.raises(ValueError, match="hint: the file looks like encoder='vits'"):
        load_released(tmp_path / "vits.pth", "vitb")


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_released(path, "tiny")


def test_pos_embed_interpolation_identity_and_shape():
    pe = torch.randn(1, 1 + 37 * 37, 8)
    assert interpolate_pos_embed(pe, 37, 37) is pe
    out = interpolate_pos_embed(pe, 28, 50)
    assert out.shape == (1, 1 + 28 * 50, 8)
    torch.testing.assert_close(out[:, 0], pe[:, 0])


@pytest.mark.parametrize("hw,expected", [
    ((518, 518), (518, 518)),
    ((480, 640), (518, 686)),    # 518 * 640/480 = 690.67 -> nearest multiple of 14 is 686
    ((1080, 1920), (518, 924)),  # 920.9 -> 924
    ((640, 480), (686, 518)),
    ((100, 100), (518, 518)),
    ((300, 1000), (518, 1722)),  # 1726.7 -> 1722
    ((517, 518), (518, 518)),    # 518.99 rounds to 518 and stays >= 518
])
def test_target_size_follows_released_rule(hw, expected):
    assert target_size(*hw) == expected
    assert all(s % 14 == 0 and s >= 518 for s in target_size(*hw))


def test_preprocess_and_predict_sizes():
    img = (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    x = preprocess(img, 70)
    assert x.shape == (3, 70, 112)
    # constant white normalises to (1 - mean) / std on every pixel
    w = preprocess(np.full((28, 28, 3), 255, np.uint8), 28)
    torch.testing.assert_close(w[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    out = predict(build_model("tiny").eval(), img, input_size=70)
    assert out.shape == (60, 90) and out.dtype == np.float32
    assert resize_prediction(torch.ones(2, 5, 5), (7, 9)).shape == (2, 7, 9)


def test_checkpoint_roundtrip_through_storage(storage_root):
    """Export to and load from a local directory and a real S3 bucket alike."""
    from depthlib import storage

    torch.manual_seed(2)
    m = build_model("tiny").eval()
    uri = storage.join(storage_root.uri, "ckpt", "tiny.pth")
    export_released(m, uri)
    loaded = load_released(uri, "tiny")
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))
    with pytest.raises(Exception, match="not found|No such|missing"):
        load_released(storage.join(storage_root.uri, "ckpt", "absent.pth"), "tiny")
