"""One clear answer from every entry script to bad settings and inputs: a single
``<script>: error: ...`` line naming what is wrong, exit status 2, no traceback,
and nothing started (no Ray cluster: each case returns before ``ray.init``).

Exit statuses of every entry script: 0 done, 1 failed while running, 2 bad
settings or input (``pipeline.py`` also 3: a finished stage's settings changed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depthlib.models import build_model, export_released

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("entry")
    torch.manual_seed(0)
    export_released(build_model("tiny"), d / "tiny.pth")
    (d / "empty").mkdir()
    (d / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 60, 30)).save(d / "images" / "a.jpg")
    (d / "garbage.pth").write_bytes(b"not a checkpoint")
    return {k: str(d / k) for k in ("tiny.pth", "empty", "images", "garbage.pth")} | {"dir": str(d)}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="")  # a case that reached ray.init would start its own cluster: visible
    return subprocess.run([sys.executable, str(ROOT / "ray_jobs" / script), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _load(script: str):
    """``ray_jobs/<script>`` as a module (registered, so its dataclasses resolve their module)."""
    import importlib.util

    name = f"entry_{script[:-3]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "ray_jobs" / script)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _in_process(capsys, script: str, *args: str) -> subprocess.CompletedProcess:
    """``ray_jobs/<script>``'s ``main(args)`` in this process (no interpreter start-up), as a
    finished process; for the cases after each script's first, which runs as a subprocess."""
    module = _load(script)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main(list(args))
    return subprocess.CompletedProcess(script, exit_info.value.code, "", capsys.readouterr().err)


def _refused(proc: subprocess.CompletedProcess, script: str, *needles: str) -> str:
    """The process ended with exit 2 and one error line naming each needle; returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Started a local Ray instance" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{script}: error: "), line
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])
    return line


def test_pseudo_label_refuses_bad_settings_and_inputs(files, capsys):
    out = str(Path(files["dir"]) / "out")
    base = ["--output", out, "--input-size", "70"]
    # the table's row: an empty input and a missing checkpoint was a "successful" job labelling nothing
    _refused(_run("pseudo_label.py", "--input", files["empty"], "--checkpoint", str(Path(files["dir"]) / "MISSING.pth"),
                  "--encoder", "tiny", *base), "pseudo_label.py", "MISSING.pth does not exist")
    _refused(_in_process(capsys, "pseudo_label.py", "--input", files["images"], "--checkpoint", files["tiny.pth"],
                         "--encoder", "vitq", *base), "pseudo_label.py", "--encoder must be one of", "vitq")
    _refused(_in_process(capsys, "pseudo_label.py", "--input", files["empty"], "--checkpoint", files["tiny.pth"],
                         "--encoder", "tiny", *base), "pseudo_label.py", "holds no images to label")
    _refused(_in_process(capsys, "pseudo_label.py", "--input", files["images"], "--checkpoint", files["tiny.pth"],
                         "--encoder", "vits", *base), "pseudo_label.py", "holds a tiny model, but --encoder is vits")
    _refused(_in_process(capsys, "pseudo_label.py", "--input", files["images"], "--checkpoint", files["garbage.pth"],
                         "--encoder", "tiny", *base), "pseudo_label.py", "garbage.pth does not load as a checkpoint")
    assert not Path(out).exists()  # nothing written for a refused run


def test_pseudo_label_refuses_an_output_holding_another_run(files, tmp_path):
    from depthlib.pseudo_label import plan as plan_mod
    from depthlib.pseudo_label.config import PseudoLabelConfig
    from depthlib.pseudo_label.job import LabellingInputError, check_inputs

    config = PseudoLabelConfig(input=files["images"], output=str(tmp_path), checkpoint=files["tiny.pth"],
                               encoder="tiny", input_size=70)
    check_inputs(config)
    plan_mod.create_or_load_plan(str(tmp_path), ["a.jpg"], config.plan_fingerprint(), 4, 4)
    check_inputs(config)  # the same run: resumable
    other = PseudoLabelConfig(input=files["images"], output=str(tmp_path), checkpoint=files["tiny.pth"],
                              encoder="tiny", input_size=70, partition_size=7)
    with pytest.raises(LabellingInputError, match="holds a run with other settings"):
        check_inputs(other)


def test_evaluate_names_a_missing_checkpoint(files):
    _refused(_run("evaluate.py", "--checkpoint", str(Path(files["dir"]) / "MISSING.pth"), "--encoder", "tiny",
                  "--dataset", f"nyu={files['empty']}", "--output", str(Path(files["dir"]) / "eval")),
             "evaluate.py", "--checkpoint", "MISSING.pth does not exist")


def test_make_synthetic_refuses_a_negative_count(files):
    _refused(_run("make_synthetic.py", "--count", "-3", "--output", str(Path(files["dir"]) / "syn")),
             "make_synthetic.py", "--count must be >= 1, got -3")


def test_predict_refuses_missing_checkpoint_and_empty_input(files, capsys):
    out = str(Path(files["dir"]) / "pred")
    _refused(_run("predict.py", "--checkpoint", str(Path(files["dir"]) / "MISSING.pth"), "--input", files["empty"],
                  "--encoder", "tiny", "--output", out), "predict.py", "--input", "holds no images")
    _refused(_in_process(capsys, "predict.py", "--checkpoint", str(Path(files["dir"]) / "MISSING.pth"), "--input",
                         files["images"], "--encoder", "tiny", "--output", out), "predict.py", "MISSING.pth does not exist")
    _refused(_in_process(capsys, "predict.py", "--checkpoint", files["tiny.pth"], "--input", files["images"],
                         "--encoder", "vitq", "--output", out), "predict.py", "--encoder must be one of")
    assert not Path(out).exists()
    _load("predict.py").main(["--checkpoint", files["tiny.pth"], "--input", files["images"], "--encoder", "tiny",
                  "--input-size", "28", "--output", out])
    assert (Path(out) / "a_depth.npy").exists()


def test_pipeline_refuses_inputs_that_hold_nothing(files, capsys):
    storage = str(Path(files["dir"]) / "pipe")
    base = ["--preset", "smoke", "--storage", storage]
    _refused(_run("pipeline.py", *base, "--unlabeled", files["empty"]), "pipeline.py",
             f"--unlabeled {files['empty']} holds no images to label")
    _refused(_in_process(capsys, "pipeline.py", *base, "--synthetic-data", f"{files['empty']}:2"), "pipeline.py",
             f"--synthetic-data {files['empty']} holds no .parquet shards")
    _refused(_in_process(capsys, "pipeline.py", *base, "--metric-data", files["images"]), "pipeline.py",
             "--metric-data", "holds no .parquet shards")
    _refused(_in_process(capsys, "pipeline.py", *base, "--pretrained", f"tiny={files['dir']}/MISSING.pth"),
             "pipeline.py", "--pretrained tiny=", "MISSING.pth does not exist")
    _refused(_in_process(capsys, "pipeline.py", *base, "--student-presets", "tiny_gpu"), "pipeline.py", "tiny_gpu")
    assert not Path(storage).exists()
