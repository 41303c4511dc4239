"""The evaluation job: dataset layouts, archives, ground-truth formats, DA-2K, the report.

Fixture benchmarks (``eval_fixtures.py``) are rendered scenes with exact depth
written in each standard layout. With *oracle* predictions (exact disparity
up to scale and shift where the protocol counts, garbage where it must not),
every dataset must score AbsRel ~0 and delta1 = 1, and DA-2K exactly its
known accuracy per scene: that checks readers, masks, crops and the protocol
end to end, from folders and tars, locally and on a real S3 server. A tiny
real model then checks that the job's numbers equal the released inference
path (``predict_images``) plus the protocol, computed here directly.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depthlib import storage
from depthlib.cli import parse_layered_config
from depthlib.evaluation.config import EvaluateConfig
from depthlib.evaluation.datasets import (DATASETS, DatasetError, GroundTruthError, decode_dpt, decode_ground_truth,
                                          parse_split, plan_dataset, scan_layout)
from depthlib.evaluation.job import run_evaluation
from depthlib.evaluation.protocol import Protocol, kitti_benchmark_crop, pairs_correct, score
from depthlib.evaluation.sources import FileReadError, Source, SourceError, read_locator
from depthlib.evaluation.stages import ReadInputs, ScoreRows
from depthlib.inference import predict_images
from depthlib.models import load_released
from eval_fixtures import DA2K_SCENES, dpt_bytes, pack_tar, pack_zip, write_benchmarks

OUTPUT_NAMES = ("report.json", "report.md", "config.json")
DATASET_FILES = ("per_image.csv", "errors.csv", "samples.png", "worst.png")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    fx = write_benchmarks(root)
    fx.write_predictions(root / "predictions")
    return fx


def _config(argv: list[str]) -> EvaluateConfig:
    return parse_layered_config(EvaluateConfig, argv)


def _quiet(_msg: str) -> None:
    pass


def _read_json(uri: str) -> dict:
    return json.loads(storage.read_bytes(uri))


def _csv_rows(uri: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.read_bytes(uri).decode())))


# --------------------------------------------------------------------------- formats and layouts


def test_ground_truth_decoders_and_their_errors(bench):
    depth = np.array([[1.5, np.inf], [0.0, 70.0]], np.float32)
    assert np.array_equal(decode_dpt(dpt_bytes(depth), "f.dpt"), depth)
    with pytest.raises(GroundTruthError, match="f.dpt.*tag"):
        decode_dpt(b"\x00" * 12 + depth.tobytes(), "f.dpt")
    with pytest.raises(GroundTruthError, match="f.dpt.*2x2"):
        decode_dpt(dpt_bytes(depth)[:-4], "f.dpt")
    d, v = decode_ground_truth("sintel", {"depth": dpt_bytes(depth)}, {"depth": "f.dpt"}, (2, 2))
    assert v.tolist() == [[True, False], [False, True]] and d[0, 1] == 0
    # ETH3D: the raw file has the image's size and nothing else.
    d, v = decode_ground_truth("eth3d", {"depth": depth.tobytes()}, {"depth": "e.JPG"}, (2, 2))
    assert v.tolist() == [[True, False], [False, True]]
    with pytest.raises(GroundTruthError, match="e.JPG.*expected 24"):
        decode_ground_truth("eth3d", {"depth": depth.tobytes()}, {"depth": "e.JPG"}, (2, 3))
    # 16-bit PNGs: NYU in mm, KITTI in 1/256 m; an 8-bit PNG is refused by name.
    buf = io.BytesIO()
    Image.fromarray(np.array([[1000, 2560]], np.uint16)).save(buf, format="PNG")
    nyu = decode_ground_truth("nyu", {"depth": buf.getvalue()}, {"depth": "d.png"}, (1, 2))[0]
    assert nyu.dtype == np.float32 and nyu[0].tolist() == pytest.approx([1.0, 2.56], rel=1e-7)
    kitti = decode_ground_truth("kitti", {"depth": buf.getvalue()}, {"depth": "d.png"}, (1, 2))[0]
    assert kitti.tolist() == [[1000 / 256, 10.0]]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf, format="PNG")
    with pytest.raises(GroundTruthError, match="d.png.*16-bit"):
        decode_ground_truth("nyu", {"depth": buf.getvalue()}, {"depth": "d.png"}, (2, 2))
    # DIODE: H x W x 1 depth squeezed, validity from the mask file.
    dd, mm = io.BytesIO(), io.BytesIO()
    np.save(dd, np.full((2, 2, 1), 3.0, np.float32))
    np.save(mm, np.array([[1.0, 0.0], [1.0, 1.0]], np.float32))
    d, v = decode_ground_truth("diode", {"depth": dd.getvalue(), "mask": mm.getvalue()},
                               {"depth": "x_depth.npy", "mask": "x_depth_mask.npy"}, (2, 2))
    assert d.shape == (2, 2) and v.tolist() == [[True, False], [True, True]]


def test_split_lists():
    kitti = DATASETS["kitti"]
    text = "# comment\n\na.png d.png 721.5\nb.png None 721.5\nc.png e.png\n"
    rows, n_no_gt = parse_split(text, kitti, "kitti.txt")
    assert rows == [["a.png", "d.png", "721.5"], ["c.png", "e.png"]] and n_no_gt == 1
    with pytest.raises(DatasetError, match=r"kitti.txt line 2: a nyu line has 2-3 fields"):
        parse_split("a b\nonly_one\n", DATASETS["nyu"], "kitti.txt")
    with pytest.raises(DatasetError, match=r"x.txt line 1: a diode line has 3 fields"):
        parse_split("a b\n", DATASETS["diode"], "x.txt")


def test_layouts_are_found_without_a_split():
    names = ["wrap/test/k_1/rgb_0001.png", "wrap/test/k_1/depth_0001.png", "wrap/test/k_1/rgb_0002.png",
             "indoors/s/a.png", "indoors/s/a_depth.npy", "indoors/s/a_depth_mask.npy",
             "outdoor/s/b.png", "outdoor/s/b_depth.npy", "outdoor/s/b_depth_mask.npy",
             "training/final/alley/frame_0001.png", "training/clean/alley/frame_0001.png",
             "training/depth/alley/frame_0001.dpt"]
    rows, n_no_gt = scan_layout(names, DATASETS["nyu"])
    assert rows == [["wrap/test/k_1/rgb_0001.png", "wrap/test/k_1/depth_0001.png"]] and n_no_gt == 1
    assert [r[0] for r in scan_layout(names, DATASETS["diode"])[0]] == ["indoors/s/a.png", "outdoor/s/b.png"]
    assert [r[0] for r in scan_layout(names, DATASETS["diode_outdoor"])[0]] == ["outdoor/s/b.png"]
    assert scan_layout(names, DATASETS["sintel"])[0] == [["training/final/alley/frame_0001.png",
                                                          "training/depth/alley/frame_0001.dpt"]]
    assert scan_layout(names, DATASETS["sintel"], "clean")[0][0][0] == "training/clean/alley/frame_0001.png"


def test_archives_are_indexed_and_read_by_range(tmp_path):
    folder = tmp_path / "DA-2K"
    (folder / "images" / "outdoor").mkdir(parents=True)
    (folder / "images" / "outdoor" / "café.jpg").write_bytes(b"jpeg bytes" * 50)
    (folder / "annotations.json").write_bytes(b"{}")
    tar = pack_tar(folder, tmp_path / "x.tar")
    src = Source.open(str(tar))
    assert src.kind == "tar" and src.names() == ["annotations.json", "images/outdoor/café.jpg"]  # "./" dropped
    assert read_locator(src.locate("images/outdoor/café.jpg")) == b"jpeg bytes" * 50
    # A zip with one top-level folder and UTF-8 names stored as cp437 (as DA-2K.zip).
    zp = pack_zip(folder, tmp_path / "DA-2K.zip")
    with zipfile.ZipFile(zp) as zf:
        assert "DA-2K/images/outdoor/café.jpg" not in zf.namelist()  # what a plain reader sees
    src = Source.open(str(zp)).rooted("annotations.json")
    assert src.prefix == "DA-2K/" and "images/outdoor/café.jpg" in src
    assert src.read("images/outdoor/café.jpg") == b"jpeg bytes" * 50
    assert src.locate("images/none.jpg") is None
    with pytest.raises(FileReadError, match="missing file .*DA-2K.zip!DA-2K/images/none.jpg"):
        src.read("images/none.jpg")
    # A damaged member is reported by name.
    data = bytearray(zp.read_bytes())
    loc = src.locate("images/outdoor/café.jpg")
    bad = tmp_path / "bad.zip"
    header_len = 30 + int.from_bytes(data[loc.offset + 26:loc.offset + 28], "little") \
        + int.from_bytes(data[loc.offset + 28:loc.offset + 30], "little")
    start = loc.offset + header_len  # the member's compressed bytes
    data[start:start + 4] = bytes(4)
    bad.write_bytes(bytes(data))
    with pytest.raises(FileReadError, match="bad.zip!DA-2K/images/outdoor/café.jpg"):
        read_locator(Source.open(str(bad)).rooted("annotations.json").locate("images/outdoor/café.jpg"))
    # Compressed tars and other files are refused with the reason.
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(folder / "annotations.json", arcname="./annotations.json")
    with pytest.raises(SourceError, match="gzip-compressed.*unpack"):
        Source.open(str(gz))
    (tmp_path / "notes.txt").write_text("hello " * 200)
    with pytest.raises(SourceError, match="neither a .tar nor a .zip"):
        Source.open(str(tmp_path / "notes.txt"))
    with pytest.raises(SourceError, match="does not exist"):
        Source.open(str(tmp_path / "nowhere"))


def test_plans_name_missing_and_malformed_files(bench, tmp_path):
    plan = plan_dataset("kitti", str(bench.root / "kitti"), str(bench.splits["kitti"]))
    missing = [s for s in plan.samples if s.get("error")]
    assert plan.n_no_gt == 1 and len(missing) == 1 and "0000000098.png" in missing[0]["detail"]
    # A copy that wraps everything in one folder is read with the same split list.
    import shutil

    shutil.copytree(bench.root / "nyu", tmp_path / "wrap" / "nyuv2")
    plan = plan_dataset("nyu", str(pack_tar(tmp_path / "wrap", tmp_path / "wrapped.tar")), str(bench.splits["nyu"]))
    assert len(plan.samples) == 2 and not any(s.get("error") for s in plan.samples)
    assert plan.samples[0]["files"]["depth"]["name"].startswith("nyuv2/test/")
    with pytest.raises(DatasetError, match="split list .*nope.txt does not exist"):
        plan_dataset("nyu", str(bench.root / "nyu"), str(tmp_path / "nope.txt"))
    with pytest.raises(DatasetError, match="no sintel samples"):
        plan_dataset("sintel", str(bench.root / "nyu"))
    (tmp_path / "da2k").mkdir()
    (tmp_path / "da2k" / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match="annotations.json is not valid JSON"):
        plan_dataset("da2k", str(tmp_path / "da2k"))
    with pytest.raises(DatasetError, match="no annotations.json"):
        plan_dataset("da2k", str(bench.root / "nyu"))
    with pytest.raises(DatasetError, match=r"only relative labels \(\d+ rows of depth_type 'disparity';"):
        plan_dataset("shards", str(bench.root / "pseudo_shards"))


def test_config_from_the_command_line():
    c = _config(["--checkpoint", "m.pth", "--encoder", "vits", "--dataset", "nyu=/a", "--dataset", "kitti=/b",
                 "--split", "nyu=/s.txt", "--output", "/o"])
    assert c.datasets() == {"nyu": "/a", "kitti": "/b"} and c.splits() == {"nyu": "/s.txt"}
    assert c.alignment_used == "disparity" and c.input_size == 518 and c.dtype == "fp32"
    assert _config(["--checkpoint", "m", "--encoder", "vits", "--dataset", "nyu=/a", "--output", "/o",
                    "--metric"]).alignment_used == "none"
    base = ["--encoder", "vits", "--output", "/o"]
    for argv, match in ((["--checkpoint", "m", "--dataset", "nyu2=/a"], "unknown dataset 'nyu2'"),
                        (["--checkpoint", "m", "--dataset", "nyu"], "NAME=URI"),
                        (["--checkpoint", "m", "--predictions", "/p", "--dataset", "nyu=/a"], "exactly one"),
                        (["--checkpoint", "m", "--dataset", "nyu=/a", "--split", "kitti=/s"], "without a --dataset"),
                        (["--checkpoint", "m", "--dataset", "nyu=/a", "--metric", "--alignment", "depth"],
                         "relative models"),
                        (["--checkpoint", "m", "--dataset", "nyu=/a", "--input-size", "500"], "multiple of 14")):
        with pytest.raises(ValueError, match=match):
            _config(base + argv)


# --------------------------------------------------------------------------- stages without Ray


def _run_stages(bench, names: list[str], metric: bool, predictions: str, **plan_kw):
    reader = ReadInputs(518, 10**8, 4, predictions=predictions)
    protocols = {n: Protocol(DATASETS[n].min_depth, DATASETS[n].max_depth, "none" if metric else "disparity",
                             DATASETS[n].crop).to_dict() for n in names}
    scorer = ScoreRows(protocols, metric)
    out = []
    for n in names:
        plan = plan_dataset(n, str(bench.root / n), str(bench.splits[n]) if n in bench.splits else None, **plan_kw)
        item = {"dataset": np.array([n], object), "layout": np.array([plan.spec.layout], object),
                "samples": np.array([json.dumps(plan.samples)], object)}
        for batch in reader(item):
            res = scorer(batch)
            out += [{k: res[k][i] for k in res} for i in range(len(res["key"]))]
    return out


def test_metric_predictions_are_scored_in_metres_unaligned(bench, tmp_path):
    """Metric model: predictions are metres, not aligned, clamped to the range: 1.1 x the
    ground truth gives AbsRel 0.1 except where 1.1 x gt passes NYU's 10 m cap."""
    preds, expected = tmp_path / "metric", {}
    for key in bench.predictions["nyu"]:
        gt = np.asarray(Image.open(bench.root / "nyu" / key.replace("rgb_", "depth_"))).astype(np.float64) / 1000
        p = preds / "nyu" / (key + ".npy")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, np.where(gt > 0, 1.1 * gt, 3.0).astype(np.float32))
        g = gt[45:471, 41:601]
        g = g[(g > 1e-3) & (g < 10)]
        expected[key] = (np.mean(np.abs(np.minimum(1.1 * g, 10.0) - g) / g), g.size)
    assert min(e[0] for e in expected.values()) < 0.1 - 1e-4  # the cap matters in this fixture
    rows = _run_stages(bench, ["nyu"], True, str(preds))
    assert len(rows) == 2 and not any(r["error"] for r in rows)
    for r in rows:
        m = json.loads(r["result"])
        assert m["abs_rel"] == pytest.approx(expected[r["key"]][0], rel=1e-5) and m["d1"] == 1.0
        assert m["n_valid"] == expected[r["key"]][1]
        assert r["preview"][:4] == b"\x89PNG"


def test_da2k_metric_order_is_smaller_depth_closer(bench, tmp_path):
    """The same oracle as depth (1/disparity) with --metric gives the same exact accuracy per scene."""
    preds = tmp_path / "metric"
    for key, disp in bench.predictions["da2k"].items():
        p = preds / "da2k" / (key + ".npy")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, np.where(disp > 0, 1.0 / np.maximum(disp, 1e-9), 1e6).astype(np.float32))
    rows = _run_stages(bench, ["da2k"], True, str(preds))
    by_scene = {json.loads(r["result"])["scene"]: json.loads(r["result"]) for r in rows}
    assert {s: v["n_correct"] / v["n_pairs"] for s, v in by_scene.items()} == bench.da2k_by_scene


# --------------------------------------------------------------------------- the job


def _check_oracle_report(report: dict, bench, expect: list[str]) -> None:
    for name in expect:
        d = report["datasets"][name]
        assert "error" not in d, d
        if name == "da2k":
            assert d["by_scene"] == bench.da2k_by_scene
            assert (d["n_pairs"], d["n_correct"], d["n_images"]) == (bench.da2k_pairs, bench.da2k_correct, 3)
            assert d["accuracy"] == bench.da2k_correct / bench.da2k_pairs
            continue
        assert d["n_images"] == bench.n_images[name], (name, d["errors"])
        assert d["abs_rel"] < 1e-5 and d["d1"] == 1.0, (name, d)
        assert {e["key"]: e["reason"] for e in d["errors"]} == bench.skipped.get(name, {}), name
        assert d["n_no_gt"] == bench.n_no_gt.get(name, 0)
        p = d["protocol"]
        assert (p["min_depth"], p["max_depth"]) == (DATASETS[name].min_depth, DATASETS[name].max_depth)
        assert p["alignment"] == "disparity"
        assert p["crop"] == {"nyu": "eigen_nyu", "kitti": "eigen_kitti"}.get(name, "none")


def _check_outputs(output: str, report: dict, names: list[str]) -> None:
    for n in OUTPUT_NAMES:
        assert storage.exists(storage.join(output, n)), n
    for name in names:
        d = report["datasets"][name]
        for f in DATASET_FILES:
            assert storage.exists(storage.join(output, name, f)), (name, f)
        rows = _csv_rows(storage.join(output, name, "per_image.csv"))
        assert len(rows) == d["n_images"]
        if name == "da2k":
            assert storage.read_bytes(storage.join(output, "da2k", "by_scene.png"))[:4] == b"\x89PNG"
        else:
            assert set(rows[0]) >= {"key", "n_valid", "abs_rel", "d1", "silog"}
            assert np.mean([float(r["abs_rel"]) for r in rows]) == pytest.approx(d["abs_rel"], rel=1e-4, abs=1e-9)
    assert report["checkpoint"] and report["encoder"] == "vitl" and report["input_size"] == 518


def test_oracle_from_folders_scores_exactly(ray_session, bench, tmp_path):
    r = bench.root
    out = str(tmp_path / "out")
    argv = ["--predictions", str(r / "predictions"), "--encoder", "vitl", "--output", out,
            "--dataset", f"nyu={r / 'nyu'}", "--split", f"nyu={bench.splits['nyu']}",
            "--dataset", f"kitti={r / 'kitti'}", "--split", f"kitti={bench.splits['kitti']}",
            "--dataset", f"eth3d={r / 'eth3d'}", "--dataset", f"diode={r / 'diode'}",
            "--split", f"diode={bench.splits['diode']}", "--dataset", f"diode_indoor={r / 'diode'}",
            "--dataset", f"scannet={r / 'scannet'}", "--dataset", f"sintel={r / 'sintel'}",
            "--dataset", f"da2k={r / 'da2k'}", "--dataset", f"shards={r / 'shards'}", "--samples-per-task", "2"]
    report = run_evaluation(_config(argv), log=_quiet)
    names = ["nyu", "kitti", "eth3d", "diode", "diode_indoor", "scannet", "sintel", "da2k", "shards"]
    _check_oracle_report(report, bench, names)
    _check_outputs(out, report, names)
    assert report["datasets"]["shards"]["protocol"]["disparity_rows_skipped"] == 1
    assert report["datasets"]["sintel"]["protocol"]["frames"].startswith("2 frames of 2 sequences")
    md = Path(out, "report.md").read_text()
    assert "| paper, Depth Anything V2-L | .074 / .946 | .045 / .979 | .487 / .752 | .131 / .865 | .066 / .952" in md
    assert "| paper, Depth Anything V2-L | 97.1 |" in md and "| outdoor | 5 | 100.0 |" in md
    assert "000009.jpg` bad_ground_truth" in md and "0000000098.png` missing_file" in md
    # the image-blind layout prior of every depth dataset: one map, which the oracle beats everywhere
    for name in names:
        d = report["datasets"][name]
        if name == "da2k":
            assert "layout_prior" not in d
            continue
        lp = d["layout_prior"]
        assert lp["images"] == d["n_images"] and lp["abs_rel"] > d["abs_rel"] + 1e-3, (name, lp, d["abs_rel"])
    assert "| layout prior (image-blind) |" in md and "Layout prior: one fixed map" in md
    # The same oracle aligned in depth space: only the scale is free there, so the shift 0.3 costs accuracy.
    argv2 = ["--predictions", str(r / "predictions"), "--encoder", "vitl", "--output", str(tmp_path / "depth"),
             "--dataset", f"eth3d={r / 'eth3d'}", "--alignment", "depth"]
    d = run_evaluation(_config(argv2), log=_quiet)["datasets"]["eth3d"]
    assert d["protocol"]["alignment"] == "depth" and d["n_images"] == 2 and d["abs_rel"] > 1e-3


def test_oracle_from_archives_local_and_s3(ray_session, bench, storage_root, tmp_path):
    """tar / zip copies (and shards) under a local dir or an S3 bucket; a missing dataset and a
    malformed split are reported by name while the others are scored."""
    r, root = bench.root, storage_root.uri
    archives = {"nyu": pack_tar(r / "nyu", tmp_path / "nyu_labeled_extracted.tar"),
                "kitti": pack_tar(r / "kitti", tmp_path / "kitti_eigen_split_test.tar"),
                "diode": pack_tar(r / "diode", tmp_path / "diode_val.tar"),
                "sintel": pack_tar(r / "sintel", tmp_path / "sintel.tar"),
                "da2k": pack_zip(r / "da2k" / "DA-2K", tmp_path / "DA-2K.zip")}
    uris = {}
    for name, path in archives.items():
        uris[name] = storage.join(root, "bench", path.name)
        storage.write_bytes(uris[name], path.read_bytes())
    for p in (r / "shards").iterdir():
        storage.write_bytes(storage.join(root, "bench", "shards", p.name), p.read_bytes())
    for p in (r / "predictions").rglob("*.npy"):
        storage.write_bytes(storage.join(root, "pred", p.relative_to(r / "predictions").as_posix()), p.read_bytes())
    splits = {}
    for name, path in bench.splits.items():
        splits[name] = storage.join(root, "splits", path.name)
        storage.write_bytes(splits[name], path.read_bytes())
    bad_split = storage.join(root, "splits", "scannet_bad.txt")
    storage.write_bytes(bad_split, b"scene0406_02/color/000000.jpg scene0406_02/depth/000000.png\nonly_one_field\n")
    out = storage.join(root, "out")
    argv = ["--predictions", storage.join(root, "pred"), "--encoder", "vitl", "--output", out,
            "--dataset", f"nyu={uris['nyu']}", "--split", f"nyu={splits['nyu']}",
            "--dataset", f"kitti={uris['kitti']}", "--split", f"kitti={splits['kitti']}",
            "--dataset", f"diode={uris['diode']}", "--split", f"diode={splits['diode']}",
            "--dataset", f"sintel={uris['sintel']}", "--dataset", f"da2k={uris['da2k']}",
            "--dataset", f"shards={storage.join(root, 'bench', 'shards')}",
            "--dataset", f"eth3d={storage.join(root, 'bench', 'eth3d.tar')}",
            "--dataset", f"scannet={r / 'scannet'}", "--split", f"scannet={bad_split}"]
    report = run_evaluation(_config(argv), log=_quiet)
    names = ["nyu", "kitti", "diode", "sintel", "da2k", "shards"]
    _check_oracle_report(report, bench, names)
    _check_outputs(out, report, names)
    assert report == _read_json(storage.join(out, "report.json"))
    assert "eth3d.tar does not exist" in report["datasets"]["eth3d"]["error"]
    assert "scannet_bad.txt line 2" in report["datasets"]["scannet"]["error"]
    # KITTI's missing image is named inside its archive.
    assert "kitti_eigen_split_test.tar!2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000098.png" in \
        report["datasets"]["kitti"]["errors"][0]["detail"]
    if storage_root.kind == "s3":
        assert storage_root.s3.secret_access_key not in json.dumps(report)


def _direct_kitti(bench, key, model, size):
    image = np.array(Image.open(bench.root / "kitti" / key).convert("RGB"))
    top, left, h, w = kitti_benchmark_crop(*image.shape[:2])
    depth_rel = key.split("/", 1)[1].replace("image_02/data", "proj_depth/groundtruth/image_02")
    gt = np.asarray(Image.open(bench.root / "kitti" / depth_rel)).astype(np.float32) / 256
    gt = gt[top:top + h, left:left + w]
    pred = predict_images(model, [np.ascontiguousarray(image[top:top + h, left:left + w])], size, "fp32",
                          sizes=[gt.shape])[0]
    return pred, gt


def test_model_numbers_equal_the_released_path_plus_protocol(ray_session, bench, tiny_checkpoint, tmp_path):
    """A real (tiny) model through the actor pool gives, image by image, what
    ``predict_images`` (the released inference path) plus ``score`` give here."""
    r, size = bench.root, 70
    out = tmp_path / "out"
    argv = ["--checkpoint", tiny_checkpoint, "--encoder", "tiny", "--input-size", str(size), "--output", str(out),
            "--dataset", f"nyu={r / 'nyu'}", "--split", f"nyu={bench.splits['nyu']}",
            "--dataset", f"kitti={r / 'kitti'}", "--split", f"kitti={bench.splits['kitti']}",
            "--dataset", f"da2k={r / 'da2k'}", "--batch-size", "2"]
    report = run_evaluation(_config(argv), log=_quiet)
    model = load_released(tiny_checkpoint, "tiny")
    got = {row["key"]: row for row in _csv_rows(str(out / "nyu" / "per_image.csv"))}
    assert len(got) == 2
    for key in bench.predictions["nyu"]:
        image = np.array(Image.open(r / "nyu" / key).convert("RGB"))
        gt = np.asarray(Image.open(r / "nyu" / key.replace("rgb_", "depth_"))).astype(np.float32) / 1000
        pred = predict_images(model, [image], size, "fp32")[0]
        m = score(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(gt > 0),
                  Protocol(1e-3, 10.0, "disparity", "eigen_nyu"))
        for k in ("abs_rel", "rmse", "d1"):
            assert float(got[key][k]) == pytest.approx(float(m[k]), rel=1e-4, abs=1e-6), (key, k)
    got = {row["key"]: row for row in _csv_rows(str(out / "kitti" / "per_image.csv"))}
    assert len(got) == 2 and report["datasets"]["kitti"]["n_no_gt"] == 1
    for key in got:
        pred, gt = _direct_kitti(bench, key, model, size)
        m = score(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(gt > 0),
                  Protocol(1e-3, 80.0, "disparity", "eigen_kitti"))
        assert float(got[key]["abs_rel"]) == pytest.approx(float(m["abs_rel"]), rel=1e-4, abs=1e-6)
    ann = json.loads((r / "da2k" / "DA-2K" / "annotations.json").read_text())
    correct = 0
    for key, pairs in ann.items():
        image = np.array(Image.open(r / "da2k" / "DA-2K" / key).convert("RGB"))
        correct += pairs_correct(predict_images(model, [image], size, "fp32")[0], pairs, image=key)
    d = report["datasets"]["da2k"]
    assert d["n_correct"] == correct and d["n_pairs"] == sum(len(v) for v in ann.values())
    assert set(d["by_scene"]) == set(DA2K_SCENES)


def test_report_when_every_sample_is_skipped(bench):
    """A dataset whose samples all fail still gets an entry, a table cell and its errors, never a crash."""
    from depthlib.evaluation.report import DatasetResults, render_markdown

    plan = plan_dataset("nyu", str(bench.root / "nyu"), str(bench.splits["nyu"]))
    nyu = DatasetResults(plan, {"alignment": "disparity", "inference": "x", "input_size": 518, "dtype": "fp32"}, 2, 3)
    da2k = DatasetResults(plan_dataset("da2k", str(bench.root / "da2k")), {"inference": "x"}, 2, 3)
    for res in (nyu, da2k):
        for s in res.plan.samples:
            res.add(s["key"], "truncated", f"{s['key']}: broken", {}, b"", 0)
    report = {"checkpoint": "c", "encoder": "vits", "input_size": 518, "metric": False, "dtype": "fp32",
              "finished_at": "now", "depthlib": "0", "wall_s": 1.0,
              "datasets": {"nyu": nyu.summary(), "da2k": da2k.summary()}}
    d = report["datasets"]["nyu"]
    assert d["n_images"] == 0 and d["abs_rel"] is None and d["errors_by_reason"] == {"truncated": 2}
    assert report["datasets"]["da2k"]["accuracy"] is None
    md = render_markdown(report)
    assert "| this checkpoint | **–** / **–** |" in md and "rgb_0000.png` truncated" in md
