"""Exports people run: transformers folders, ONNX files, safetensors (depthlib.export, ray_jobs/export.py).

Round trips compare fp32 outputs with the project's model, as max |a - b| / max |b|:
transformers within 1e-4 and ONNX Runtime within 1e-3, at two or more input shapes
and batch sizes, relative and metric heads. The real photo is matplotlib's
``grace_hopper.jpg`` (installed with matplotlib, a core dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from depthlib.export import hf as hf_mod  # noqa: E402
from depthlib.export.job import ExportConfig, max_relative_error, resolve_checkpoint, run_export  # noqa: E402
from depthlib.models import build_model, load_released  # noqa: E402
from depthlib.models import encoders as encoders_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HF_TOL, ONNX_TOL = 1e-4, 1e-3


def _hf_style_pos_embed(pos_embed, grid_h, grid_w, offset=0.1):
    """transformers' DINOv2 rule (resize to the grid by size), to show it is the only difference."""
    n = pos_embed.shape[1] - 1
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    side, dim = int(n ** 0.5), pos_embed.shape[-1]
    patch = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _model(encoder="tiny", metric=False, seed=0):
    torch.manual_seed(seed)
    model = build_model(encoder, metric=metric, max_depth=20.0).eval()
    if not metric:  # the relative head's default start is a constant; make outputs vary
        torch.nn.init.normal_(model.depth_head.scratch.output_conv2[2].bias, 0.5, 0.1)
    return model


def _compare(a, b) -> float:
    return max_relative_error(a.detach().numpy() if torch.is_tensor(a) else a,
                              b.detach().numpy() if torch.is_tensor(b) else b)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny relative and a tiny metric model, each saved as a transformers folder."""
    out = {}
    for metric in (False, True):
        model = _model(metric=metric, seed=1 + metric)
        d = tmp_path_factory.mktemp("hf_metric" if metric else "hf_relative")
        hf_mod.save_hf_folder(model, str(d), card="card")
        out[metric] = (model, str(d))
    return out


@pytest.mark.parametrize("metric", [False, True], ids=["relative", "metric"])
def test_hf_round_trip(hf_folders, metric, monkeypatch):
    from transformers import AutoModelForDepthEstimation

    model, folder = hf_folders[metric]
    hf = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    assert hf.config.depth_estimation_type == ("metric" if metric else "relative")
    assert hf.config.max_depth == (20 if metric else 1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        # 518 x 518: the pretraining grid, no position-embedding resampling on either side.
        for batch in (1, 2):
            x = torch.randn(batch, 3, 518, 518, generator=gen)
            assert _compare(hf(pixel_values=x).predicted_depth, model(x)) < HF_TOL
        # Other sizes: transformers resizes position embeddings by size, the released code by
        # scale_factor (grid + 0.1) / 37. With that one rule swapped in, the outputs agree;
        # without it they differ by the resampling alone (measured ~2e-4 here, see README).
        shapes = [(3, 140, 196), (2, 98, 252)]
        natural = []
        for b, h, w in shapes:
            x = torch.randn(b, 3, h, w, generator=gen)
            theirs = hf(pixel_values=x).predicted_depth
            natural.append(_compare(theirs, model(x)))
            with monkeypatch.context() as m:
                m.setattr(encoders_mod, "interpolate_pos_embed", _hf_style_pos_embed)
                assert _compare(theirs, model(x)) < HF_TOL
        assert 0 < max(natural) < 2e-3, natural


def test_hf_folder_layout(hf_folders):
    _, folder = hf_folders[False]
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pth", ".py")) for f in files)  # no pickles, no code
    pre = json.loads(Path(folder, "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 518, "width": 518} and pre["keep_aspect_ratio"] is True
    assert pre["ensure_multiple_of"] == 14 and pre["resample"] == 3
    assert pre["image_mean"] == [0.485, 0.456, 0.406] and pre["image_std"] == [0.229, 0.224, 0.225]


# Sizes of the released models, from transformers' own configs of Depth-Anything-V2-{Small,Base,Large}-hf
# (hidden size, layers, heads, out_indices, neck sizes, fusion size) and the paper's ViT-G.
REAL_SIZES = {
    "vits": (384, 12, 6, [3, 6, 9, 12], [48, 96, 192, 384], 64),
    "vitb": (768, 12, 12, [3, 6, 9, 12], [96, 192, 384, 768], 128),
    "vitl": (1024, 24, 16, [5, 12, 18, 24], [256, 512, 1024, 1024], 256),
    "vitg": (1536, 40, 24, [10, 20, 30, 40], [1536, 1536, 1536, 1536], 384),
}


@pytest.mark.parametrize("encoder", list(REAL_SIZES))
def test_real_sizes_map_one_to_one(encoder):
    """Every encoder size: the config has the released numbers and the mapped weights fit the
    transformers model key for key and shape for shape (both built on the meta device)."""
    from transformers import DepthAnythingForDepthEstimation

    for metric in (False, True):
        config = hf_mod.hf_config(encoder, metric=metric, max_depth=80.0)
        hidden, layers, heads, out_indices, neck, fusion = REAL_SIZES[encoder]
        bb = config.backbone_config
        assert (bb.hidden_size, bb.num_hidden_layers, bb.num_attention_heads, bb.out_indices) == \
            (hidden, layers, heads, out_indices)
        assert bb.use_swiglu_ffn == (encoder == "vitg")
        assert (list(config.neck_hidden_sizes), config.fusion_hidden_size, config.reassemble_hidden_size) == \
            (neck, fusion, hidden)
        assert config.max_depth == (80 if metric else 1)
        with torch.device("meta"):
            ours = build_model(encoder, metric=metric)
            theirs = DepthAnythingForDepthEstimation(config)
        hf_mod.check_keys(hf_mod.to_hf_state(ours.state_dict(), encoder), theirs.state_dict(), encoder)


@pytest.mark.parametrize("encoder,metric", [
    ("vits", False), pytest.param("vits", True, marks=pytest.mark.slow),
    pytest.param("vitg", False, marks=pytest.mark.slow)])
def test_real_sizes_outputs(encoder, metric, monkeypatch):
    """Random weights of a real size through transformers: equal outputs, relative and metric
    (small non-square inputs, with the position-embedding rule aligned as above).

    ViT-B and ViT-L differ from ViT-S only in widths and depths, whose names and
    shapes the test above checks for every size; ViT-G adds the SwiGLU MLP. So
    ViT-S (both heads) and ViT-G cover every mapped module (~60 s saved)."""
    monkeypatch.setattr(encoders_mod, "interpolate_pos_embed", _hf_style_pos_embed)
    model = _model(encoder, metric=metric)
    hf = hf_mod.to_hf_model(model)
    x = torch.randn(2, 3, 98, 140, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _compare(hf(pixel_values=x).predicted_depth, model(x)) < HF_TOL


def test_hf_key_mapping_refuses_unknown_and_missing_names():
    state = _model().state_dict()
    with pytest.raises(hf_mod.KeyMappingError, match=r"depth_head\.scratch\.extra\.weight"):
        hf_mod.to_hf_state({**state, "depth_head.scratch.extra.weight": torch.zeros(1)}, "tiny")
    mapped = hf_mod.to_hf_state(state, "tiny")
    expected = dict(mapped)
    del mapped["head.conv3.bias"]
    mapped["neck.bogus.weight"] = torch.zeros(1)
    with pytest.raises(hf_mod.KeyMappingError) as e:
        hf_mod.check_keys(mapped, expected, "tiny")
    assert "missing keys (1): head.conv3.bias" in str(e.value)
    assert "unexpected keys (1): neck.bogus.weight" in str(e.value)


# --------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_relative(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported by the job (one export serves the tests below: ~15 s)."""
    out = tmp_path_factory.mktemp("onnx") / "out"
    summary = run_export(ExportConfig(checkpoint=tiny_checkpoint, encoder="tiny", format="onnx",
                                      output=str(out)), log=lambda *_: None)
    return load_released(tiny_checkpoint, "tiny"), str(out / "model.onnx"), summary


def _onnx_check(model, path, cases):
    import onnx

    from depthlib.export.onnx_file import OPSET, onnx_session, run_onnx

    proto = onnx.load(path)
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # dynamic B, H, W
    session = onnx_session(path)
    gen = torch.Generator().manual_seed(5)
    errors = {}
    for b, h, w in cases:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            errors[(b, h, w)] = _compare(run_onnx(session, x), model(x))
    assert max(errors.values()) < ONNX_TOL, errors
    return errors


def test_onnx_round_trip(onnx_relative):
    model, path, _ = onnx_relative
    # the pretraining grid (no resampling), and two other grids at other batch sizes
    _onnx_check(model, path, [(1, 518, 518), (3, 140, 196), (2, 266, 364)])


@pytest.mark.slow
def test_onnx_round_trip_metric_with_external_weights_as_one_named_file(tmp_path, monkeypatch):
    """Also the ViT-G path (weights over protobuf's 2 GB go to "<name>.data" beside the graph),
    forced on the tiny model, through the job with ``--output`` naming the file: both files land
    in that folder under their own names, and ONNX Runtime finds the weights."""
    from depthlib.export import onnx_file
    from depthlib.models import released_bytes

    model = _model(metric=True, seed=6)
    checkpoint = tmp_path / "metric.pth"
    checkpoint.write_bytes(released_bytes(model.state_dict(), "tiny"))
    monkeypatch.setattr(onnx_file, "SINGLE_FILE_BYTES", 0)
    target = tmp_path / "export" / "m.onnx"
    run_export(ExportConfig(checkpoint=str(checkpoint), encoder="tiny", format="onnx", metric=True,
                            max_depth=20.0, output=str(target)), log=lambda *_: None)
    assert sorted(os.listdir(target.parent)) == ["m.onnx", "m.onnx.data"]
    assert target.stat().st_size < (target.parent / "m.onnx.data").stat().st_size  # the weights are outside
    _onnx_check(model, str(target), [(2, 518, 518), (1, 266, 364)])


@pytest.mark.parametrize("metric", [False, True], ids=["relative", "metric"])
def test_onnx_forward_is_the_models(metric):
    """The branch-free forward the ONNX file is traced from equals the model at the pretraining
    grid (no resampling) and elsewhere (the released (grid + 0.1) / 37 rule as matrices)."""
    from depthlib.export.onnx_file import TraceableDepthAnything

    model = _model(metric=metric, seed=7)
    wrapped = TraceableDepthAnything(model).eval()
    with torch.no_grad():
        for b, h, w in [(1, 518, 518), (2, 98, 140), (1, 28, 742)]:
            x = torch.randn(b, 3, h, w)
            assert _compare(wrapped(x), model(x)) < 1e-5


# --------------------------------------------------------------------------- safetensors


def test_released_pth_to_safetensors_and_back(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    from depthlib.models.checkpoints import check_checkpoint, load_state_dict_file

    out = tmp_path / "tiny.safetensors"
    summary = run_export(ExportConfig(checkpoint=tiny_checkpoint, encoder="tiny", format="safetensors",
                                      output=str(out)), log=lambda *_: None)
    assert summary["files"] == [str(out)] and summary["errors"]["518x518"] == 0.0
    pth = load_state_dict_file(tiny_checkpoint)
    st = load_file(str(out))  # what the official code would read: the released keys, unchanged values
    assert sorted(st) == sorted(pth)
    assert all(torch.equal(st[k], pth[k]) for k in pth)
    check_checkpoint(str(out), "tiny")
    a, b = load_released(tiny_checkpoint, "tiny"), load_released(str(out), "tiny")
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="holds a tiny model, but --encoder is vits"):
        check_checkpoint(str(out), "vits")


# --------------------------------------------------------------------------- the job and its records


def _load_entry():
    import importlib.util

    name = "entry_export"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "ray_jobs" / "export.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _photo() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    return np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                      .convert("RGB")).copy()


def test_pipeline_on_a_real_photo(tiny_checkpoint, tmp_path, monkeypatch):
    """The exported folder through ``pipeline("depth-estimation")`` with no other code, against
    the project's model on the pipeline's own input and with the pipeline's resize back."""
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from depthlib.inference import predict_images, run_batch
    from depthlib.transforms import preprocess

    out = tmp_path / "hf"
    _load_entry().main(["--checkpoint", tiny_checkpoint, "--encoder", "tiny", "--format", "hf",
                        "--output", str(out)])
    image = _photo()  # 600 x 512
    result = pipeline("depth-estimation", model=str(out), device="cpu")(Image.fromarray(image))
    got = result["predicted_depth"]
    assert tuple(got.shape) == image.shape[:2] and result["depth"].size == (512, 600)
    model = load_released(tiny_checkpoint, "tiny")
    pixel_values = AutoImageProcessor.from_pretrained(str(out))(images=Image.fromarray(image),
                                                               return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape[-2:]) == tuple(preprocess(image).shape[-2:]) == (602, 518)

    def pipeline_resize(pred):  # post_process_depth_estimation's resize to the image
        return F.interpolate(pred[None, None], size=image.shape[:2], mode="bicubic", align_corners=False)[0, 0]

    with monkeypatch.context() as m:  # the position-embedding rule aligned: the same numbers
        m.setattr(encoders_mod, "interpolate_pos_embed", _hf_style_pos_embed)
        assert _compare(got, pipeline_resize(run_batch(model, pixel_values, "fp32")[0])) < HF_TOL
    same_input = _compare(got, pipeline_resize(run_batch(model, pixel_values, "fp32")[0]))
    assert same_input < 1e-3  # resampling of position embeddings only (1.1e-4 measured)
    # The project's predict (its own preprocessing, no antialiasing, float resize) differs more,
    # by the preprocessing (8.5e-4 measured here; 7e-3 with `make demo`'s trained teacher).
    ours = predict_images(model, [image], dtype="fp32", sizes=[(602, 518)])[0]
    assert same_input < _compare(got, pipeline_resize(torch.from_numpy(ours))) < 1e-2


def _run_dir(tmp_path, tiny_checkpoint) -> Path:
    """A finished training run's directory as the training job leaves it, with an evaluation report."""
    run = tmp_path / "run"
    step = run / "ray_train" / "step-00000040"
    step.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "model.pth")
    shutil.copy(tiny_checkpoint, step / "model.pt")
    cfg = {"stage": "student", "encoder": "tiny", "data": ["s3://bucket/labels/a", "s3://bucket/labels/b"],
           "steps": 50, "crop": 126, "seed": 0}
    (run / "config.json").write_text(json.dumps({"config": cfg, "depthlib": "0.1.0"}))
    (run / "run_state.json").write_text(json.dumps({"finished_step": 50, "final": {"val_abs_rel": 0.25,
                                                                                    "val_d1": 0.6}}))
    (step / "train_state.json").write_text(json.dumps({"step": 40, "config": cfg}))
    (run / "report.md").write_text("# Depth evaluation of `x`\n\nintro\n\n## Zero-shot depth\n\n"
                                   "| Method | NYU-D AbsRel |\n|---|---|\n| this checkpoint | **.123** |\n\n"
                                   "![DA-2K by scene](da2k/by_scene.png)\n\n## Protocol\n\nnot in the card\n")
    return run


def test_model_card_holds_the_runs_records(tiny_checkpoint, tmp_path):
    run = _run_dir(tmp_path, tiny_checkpoint)
    out = tmp_path / "hf"
    summary = run_export(ExportConfig(checkpoint=str(run), encoder="tiny", format="hf", output=str(out)),
                         log=lambda *_: None)
    assert summary["weights"] == str(run / "model.pth") and summary["errors"]["518x518"] < HF_TOL
    card = (out / "README.md").read_text()
    for fact in ("pipeline_tag: depth-estimation", "`tiny`", "`student`", "`s3://bucket/labels/a`",
                 "`s3://bucket/labels/b`", "| optimiser steps | 50 |", "last validation abs_rel | 0.25",
                 "| this checkpoint | **.123** |"):
        assert fact in card, fact
    assert "not in the card" not in card and "by_scene.png" not in card
    # The Ray Train checkpoint directory: its own step; the run's config two levels up.
    assert resolve_checkpoint(str(run / "ray_train" / "step-00000040")).endswith("step-00000040/model.pt")
    (run / "model.pth").unlink()  # a run not finished: its latest checkpoint
    weights = resolve_checkpoint(str(run))
    assert weights.endswith("step-00000040/model.pt")
    from depthlib.export.model_card import find_records

    rec = find_records(weights, report=str(run))
    assert rec.step == 40 and rec.config["data"] == ["s3://bucket/labels/a", "s3://bucket/labels/b"]
    assert ".123" in rec.report_markdown
    released = find_records(tiny_checkpoint)
    assert released.sources == [] and released.step is None


def test_onnx_job_writes_one_file_and_a_card(onnx_relative):
    _, path, summary = onnx_relative
    out = os.path.dirname(path)
    assert sorted(os.listdir(out)) == ["README.md", "model.onnx"]
    assert set(summary["errors"]) == {"518x518", "392x518"} and max(summary["errors"].values()) < ONNX_TOL
    card = Path(out, "README.md").read_text()
    assert "opset 18" in card and "No training records were found" in card


def test_bad_settings_and_inputs_exit_2_before_any_work(tiny_checkpoint, tmp_path, capsys):
    import subprocess

    missing = str(tmp_path / "nope.pth")
    proc = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "export.py"), "--checkpoint", missing,
                           "--encoder", "tiny", "--format", "hf", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"export.py: error: --checkpoint {missing} does not exist"]
    main = _load_entry().main
    cases = {
        ("--encoder", "vits"): "holds a tiny model, but --encoder is vits",
        ("--encoder", "vitz"): "--encoder must be one of",
        ("--max-depth", "-3"): "--max-depth must be a positive number",
        ("--max-depth", "nan"): "--max-depth must be a positive number",
        ("--report", str(tmp_path / "none.md")): "--report",
    }
    for (flag, value), message in cases.items():
        args = {"--checkpoint": tiny_checkpoint, "--encoder": "tiny", "--format": "hf",
                "--output": str(tmp_path / "o"), "--metric": None, flag: value}
        argv = [x for k, v in args.items() for x in ((k,) if v is None else (k, v))]
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[0].startswith("export.py: error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_checkpoint_with_missing_or_extra_key_is_refused_with_names(tiny_checkpoint, tmp_path, capsys):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("depth_head.scratch.output_conv1.bias")
    state["depth_head.scratch.surplus.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(SystemExit) as e:
        _load_entry().main(["--checkpoint", str(bad), "--encoder", "tiny", "--format", "onnx",
                            "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("export.py: error: ") and len(err.strip().splitlines()) == 1
    assert "missing keys (1): depth_head.scratch.output_conv1.bias" in err
    assert "unexpected keys (1): depth_head.scratch.surplus.weight" in err
    assert not (tmp_path / "o").exists()


def test_core_jobs_do_not_import_the_export_packages():
    code = ("import sys, depthlib.models.checkpoints, depthlib.inference, depthlib.export.job, "
            "depthlib.export.model_card; "
            "bad = [m for m in ('transformers', 'onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
