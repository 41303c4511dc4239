"""What only a CUDA device exercises: bf16 autocast inference and training,
pinned non-blocking copies on a side stream, the labelling actor on the GPU,
DDP over NCCL, a checkpoint written on the GPU and resumed on the CPU, and
``torch.compile`` against eager.

Every test is marked ``gpu`` and skipped where ``torch.cuda.is_available()``
is False (``tests/conftest.py``). Each takes seconds on an H200 (the compile
test tens of seconds). Run on a GPU machine with
``python -m pytest -q -m gpu tests/test_gpu.py`` (``benchmarks/gpu_session.sh``).

Tolerances (stated once, used below):

* ``BF16_REL``: relative L2 error ``||a - b|| / ||b||`` of a bf16-autocast
  output against fp32 on the same weights and inputs: 1e-2. bf16 keeps 8
  mantissa bits (relative rounding ~4e-3 per value); measured with CPU bf16
  autocast on these random-weight models the error is 1.2e-3 (tiny) and
  1.5e-3 (vits), so 1e-2 leaves room for CUDA's kernels while still failing
  on a wrong cast (fp16 overflow, a bf16 output, a missing normalisation).
  A loss (training) is compared within ``2 * BF16_REL``.
* ``FP32_REL``: the same for two fp32 runs that may pick different kernels
  (compiled vs eager, GPU vs CPU) with TF32 switched off: 1e-3.
"""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

BF16_REL = 1e-2
FP32_REL = 1e-3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def seeded_model(encoder: str = "tiny", seed: int = 0) -> torch.nn.Module:
    from depthlib.models import build_model

    torch.manual_seed(seed)
    return build_model(encoder)


@pytest.fixture
def no_tf32():
    """fp32 means fp32: TF32 matmuls and convolutions off for the test, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def fixed_micro_batches(device: str, crop: int = 56, batch: int = 4, micro: int = 2, seed: int = 0):
    """``micro`` ``(images, batch)`` pairs as ``RelativeObjective`` reads them (as tests/parallel_step.py
    builds them, but with smooth disparity targets, 4 x 4 random values upsampled, that a model can fit)."""
    out = []
    for m in range(micro):
        g = torch.Generator().manual_seed(1000 * seed + m)
        images = torch.randn(batch, 3, crop, crop, generator=g)
        coarse = torch.rand(batch, 1, 4, 4, generator=g)
        target = torch.nn.functional.interpolate(coarse, size=(crop, crop), mode="bilinear",
                                                 align_corners=False)[:, 0] + 0.05  # disparity
        mask = torch.rand(batch, crop, crop, generator=g) > 0.1
        region = torch.zeros(batch, crop, crop, dtype=torch.uint8)
        region[0, : crop // 2, : crop // 2] = 1  # a CutMix box in the first image
        out.append((images.to(device), {"target": target.to(device), "mask": mask.to(device),
                                        "region": region.to(device)}))
    return out


def relative_objective(model: torch.nn.Module, feature_alignment: bool = True):
    """The relative stage's objective; with feature alignment, against a frozen copy of ``model``'s encoder now."""
    from depthlib.training.objectives import RelativeObjective

    if not feature_alignment:
        return RelativeObjective(trim=0.1)
    raw = model.module if hasattr(model, "module") else model
    return RelativeObjective(trim=0.1, frozen_encoder=copy.deepcopy(raw.pretrained), feature_layer=3)


def mean_loss(terms: list[dict[str, float]]) -> float:
    return sum(t["loss"] for t in terms) / len(terms)


# ---------------------------------------------------------------- bf16 inference


@pytest.mark.parametrize("encoder", ["tiny", "vits"])
@pytest.mark.parametrize("batch", [1, 8])
def test_bf16_inference_matches_fp32(encoder, batch, no_tf32):
    """``run_batch`` in bf16 autocast on CUDA: float32 output on CUDA, within
    ``BF16_REL`` of fp32 on the same weights, and not bit-equal to it (autocast ran)."""
    from depthlib.inference import run_batch

    model = seeded_model(encoder).cuda().eval()
    x = torch.randn(batch, 3, 140, 182, generator=torch.Generator().manual_seed(1))  # CPU input: run_batch moves it
    ref = run_batch(model, x, "fp32")
    out = run_batch(model, x, "bf16")
    for y in (ref, out):
        assert y.device.type == "cuda" and y.dtype == torch.float32 and y.shape == (batch, 140, 182)
        assert torch.isfinite(y).all()
    assert ref.norm() > 0
    assert not torch.equal(out, ref), "bf16 output bit-equal to fp32: autocast did not run"
    assert rel_err(out, ref) < BF16_REL
    for i in range(batch):  # every image, not only the batch as a whole
        assert rel_err(out[i], ref[i]) < BF16_REL


# ---------------------------------------------------------------- bf16 training step


def test_bf16_training_step_loss_falls_and_matches_fp32():
    """``optimizer_step`` under ``autocast_for("cuda", "bf16")``: the first
    step's loss within ``2 * BF16_REL`` (relative) of fp32 from the same weights; over 20
    steps on one fixed batch every loss is finite and the last three average
    below 0.8 x the first."""
    from depthlib.inference import autocast_for
    from depthlib.training.optim import make_optimizer
    from depthlib.training.parallel import optimizer_step

    micro = fixed_micro_batches("cuda")
    first = {}
    for dtype in ("fp32", "bf16"):
        model = seeded_model().cuda().train()
        objective = relative_objective(model)
        optimizer = make_optimizer(model, "adam", 1e-3, 10.0, 0.0)
        steps = 20 if dtype == "bf16" else 1
        losses = [mean_loss(optimizer_step(model, objective, optimizer, micro, len(micro), grad_clip=1.0,
                                           autocast=autocast_for("cuda", dtype)))
                  for _ in range(steps)]
        assert all(np.isfinite(losses)), losses
        first[dtype] = losses[0]
        for p in model.parameters():
            assert p.dtype == torch.float32  # autocast leaves the master weights fp32
    assert abs(first["bf16"] - first["fp32"]) <= 2 * BF16_REL * abs(first["fp32"]), first
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


# ---------------------------------------------------------------- pinned, non-blocking copies


def test_pinned_non_blocking_copy_on_side_stream(no_tf32):
    """A pinned tensor copied with ``non_blocking=True`` on a side stream and
    event-synchronised equals its source; a forward on the default stream after
    ``wait_stream`` gives the same output as after a blocking copy."""
    g = torch.Generator().manual_seed(2)
    src = torch.randn(8, 3, 140, 140, generator=g).pin_memory()
    big = torch.randn(64, 1024, 1024, generator=g).pin_memory()  # 256 MiB: a copy that takes a while
    assert src.is_pinned() and big.is_pinned()
    side = torch.cuda.Stream()
    done = torch.cuda.Event()
    with torch.cuda.stream(side):
        big_gpu = big.to("cuda", non_blocking=True)
        x_gpu = src.to("cuda", non_blocking=True)
        done.record(side)
    done.synchronize()
    assert torch.equal(big_gpu.cpu(), big)
    assert torch.equal(x_gpu.cpu(), src)

    model = seeded_model().cuda().eval()
    with torch.inference_mode():
        expected = model(src.to("cuda"))  # blocking copy
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            _ = big.to("cuda", non_blocking=True)  # keep the side stream busy ahead of the input
            x_side = src.to("cuda", non_blocking=True)
        main = torch.cuda.current_stream()
        main.wait_stream(side)
        x_side.record_stream(main)  # allocated on side, used on main
        out = model(x_side)
        torch.cuda.synchronize()
    assert torch.equal(x_side.cpu(), src)
    assert rel_err(out, expected) < 1e-6, rel_err(out, expected)


# ---------------------------------------------------------------- the labelling actor


def test_label_actor_on_gpu_matches_cpu_fp32(tmp_path):
    """``LabelActor`` (tiny, bf16, batch 4) on CUDA over two input shapes (one of
    them more rows than a batch) and one error row: ``in_h x in_w`` float32 labels,
    finite, within ``BF16_REL`` of the same checkpoint run on the CPU in fp32 on the
    same pixels; other columns pass through, ``pixels`` is dropped.

    The pixels come from the library's own ``model_input`` (the labelling job's
    ``fast`` uint8 inputs, normalised on the device); the CPU reference
    normalises them with ``pixels_to_model`` on the CPU."""
    from depthlib.models import export_released, load_released
    from depthlib.pseudo_label.stages import NO_LABEL, LabelActor, model_input, pixels_to_model, tensor_column

    ckpt = tmp_path / "tiny.pth"
    export_released(seeded_model(), ckpt)
    actor = LabelActor(str(ckpt), encoder="tiny", dtype="bf16", batch_size=4)
    assert actor.device.type == "cuda"
    assert next(actor.model.parameters()).device.type == "cuda"

    rng = np.random.default_rng(3)
    sizes = [(120, 160)] * 5 + [(200, 90)] * 2
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    inputs = [np.ascontiguousarray(model_input(im, 140, "fast")) for im in images]
    n = len(inputs) + 1  # + an error row
    keys = [f"img{i}" for i in range(n)]
    error = [""] * len(inputs) + ["decode_error"]
    batch = {
        "key": np.array(keys, dtype=object),
        "error": np.array(error, dtype=object),
        "detail": np.array([""] * len(inputs) + ["bad bytes"], dtype=object),
        "in_h": np.array([p.shape[1] for p in inputs] + [0], dtype=np.int64),
        "in_w": np.array([p.shape[2] for p in inputs] + [0], dtype=np.int64),
        "pixels": tensor_column(inputs + [np.zeros((3, 0, 0), np.uint8)]),
        "extra": np.arange(n, dtype=np.int64),
    }
    out = actor(batch)
    assert "pixels" not in out
    assert list(out["key"]) == keys and list(out["extra"]) == list(range(n))
    assert out["error"][-1] == "decode_error" and out["label"][-1].shape == NO_LABEL.shape
    assert all(e == "" for e in out["error"][:-1]), list(zip(out["error"], out["detail"]))

    cpu_model = load_released(str(ckpt), "tiny").eval()
    for i, p in enumerate(inputs):
        h, w = p.shape[1:]
        label = out["label"][i]
        assert label.shape == (h, w) and label.dtype == np.float32 and np.isfinite(label).all()
        with torch.inference_mode():
            ref = cpu_model(pixels_to_model(p[None]))[0]
        assert ref.norm() > 0
        assert rel_err(torch.from_numpy(label.copy()), ref) < BF16_REL, (i, rel_err(torch.from_numpy(label.copy()), ref))


# ---------------------------------------------------------------- DDP over NCCL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_nccl_single_process(monkeypatch, no_tf32):
    """A one-process NCCL group: ``all_reduce`` of a CUDA tensor (SUM over one
    rank: unchanged), and ``optimizer_step`` (2 accumulated micro batches, so
    ``no_sync`` runs too) on ``DistributedDataParallel(device_ids=[0])`` ends at
    the weights of the same step without DDP (SGD, within 1e-5 absolute)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from depthlib.training.parallel import optimizer_step

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
        t = torch.arange(6, dtype=torch.float32, device="cuda")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        assert torch.equal(t.cpu(), torch.arange(6, dtype=torch.float32))

        micro = fixed_micro_batches("cuda")
        results = {}
        for wrap in (False, True):
            model = seeded_model().cuda().train()
            objective = relative_objective(model)
            wrapped = DistributedDataParallel(model, device_ids=[0]) if wrap else model
            optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-2)
            terms = optimizer_step(wrapped, objective, optimizer, micro, len(micro), grad_clip=0.0)
            assert np.isfinite(mean_loss(terms))
            results[wrap] = (mean_loss(terms), {k: v.detach().clone() for k, v in model.state_dict().items()})
        assert abs(results[True][0] - results[False][0]) <= 1e-5 * abs(results[False][0])
        start = seeded_model().state_dict()
        moved = 0
        for k, v in results[False][1].items():
            torch.testing.assert_close(results[True][1][k], v, rtol=0, atol=1e-5, msg=k)
            moved += int(not torch.equal(v.cpu(), start[k]))
        assert moved > 0, "the step changed no weight"
        dist.barrier()
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


# ---------------------------------------------------------------- checkpoint: GPU -> CPU


def _tensors(obj, prefix=""):
    """Every tensor in a nested state dict, as ``{path: tensor}``."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _tensors(v, f"{prefix}/{k}").items()}
    if isinstance(obj, (list, tuple)):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _tensors(v, f"{prefix}/{i}").items()}
    return {}


def test_checkpoint_written_on_gpu_resumes_on_cpu(tmp_path, no_tf32):
    """A CUDA model + Adam after one step, written with ``write_checkpoint_dir``
    (optimiser state as the loop takes it: ``get_optimizer_state_dict``, full,
    tensors left on the GPU), read with ``read_checkpoint_dir`` (CPU,
    ``weights_only``): every tensor comes back on the CPU equal to its GPU value;
    a CPU model and Adam restored from it (as the loop restores) hold the same
    state, and one more step on the CPU lands within 0.1 x the step's mean update
    (mean absolute difference) of the same step continued on the GPU."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    from depthlib.training.optim import make_optimizer, make_scheduler
    from depthlib.training.parallel import optimizer_step
    from depthlib.training.state import TrainState, read_checkpoint_dir, write_checkpoint_dir

    model = seeded_model().cuda().train()
    objective = relative_objective(model, feature_alignment=False)  # the same objective on both sides below
    optimizer = make_optimizer(model, "adam", 1e-4, 10.0, 0.0)
    scheduler = make_scheduler(optimizer, 100, 10, 1.0)
    optimizer_step(model, objective, optimizer, fixed_micro_batches("cuda", seed=0), 2, grad_clip=1.0)
    scheduler.step()
    full = StateDictOptions(full_state_dict=True)
    optim_state = get_optimizer_state_dict(model, optimizer, options=full)
    gpu_optim = _tensors(optim_state)
    assert any(t.is_cuda for t in gpu_optim.values()), "nothing of the optimiser state on the GPU"
    gpu_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert all(v.is_cuda for v in gpu_model.values())

    write_checkpoint_dir(str(tmp_path / "ckpt"), model_state=model.state_dict(), encoder="tiny",
                         optimizer_state=optim_state, scheduler_state=scheduler.state_dict(),
                         state=TrainState(step=1), config={"encoder": "tiny"})
    state, model_state, optim_back, sched_back, _rng = read_checkpoint_dir(str(tmp_path / "ckpt"), "tiny")
    assert state.step == 1 and sched_back["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert set(model_state) == set(gpu_model)
    for k, v in model_state.items():
        assert v.device.type == "cpu" and torch.equal(v, gpu_model[k].cpu()), k
    cpu_optim = _tensors(optim_back)
    assert set(cpu_optim) == set(gpu_optim)
    for k, v in cpu_optim.items():
        assert v.device.type == "cpu" and torch.equal(v, gpu_optim[k].cpu()), k

    # resume on the CPU as the training loop does
    cpu_model = seeded_model(seed=123).train()
    cpu_model.load_state_dict(model_state, strict=True)
    cpu_optimizer = make_optimizer(cpu_model, "adam", 1e-4, 10.0, 0.0)
    set_optimizer_state_dict(cpu_model, cpu_optimizer, optim_back, options=full)
    restored = _tensors(get_optimizer_state_dict(cpu_model, cpu_optimizer, options=full))
    assert set(restored) == set(gpu_optim)
    for k, v in restored.items():
        assert v.device.type == "cpu" and torch.equal(v, gpu_optim[k].cpu()), k

    # one more step each side on the same batch
    before = {k: v.cpu() for k, v in gpu_model.items()}
    optimizer_step(model, objective, optimizer, fixed_micro_batches("cuda", seed=1), 2, grad_clip=1.0)
    optimizer_step(cpu_model, relative_objective(cpu_model, feature_alignment=False), cpu_optimizer, fixed_micro_batches("cpu", seed=1), 2,
                   grad_clip=1.0)
    gpu_after, cpu_after = model.state_dict(), cpu_model.state_dict()
    diff = update = 0.0
    for k, v in cpu_after.items():
        if v.is_floating_point():
            diff += float((v - gpu_after[k].cpu()).abs().sum())
            update += float((gpu_after[k].cpu() - before[k]).abs().sum())
    assert update > 0
    assert diff <= 0.1 * update, (diff, update)


# ---------------------------------------------------------------- torch.compile


@pytest.fixture(scope="module")
def eager_and_compiled():
    model = seeded_model().cuda().eval()
    return model, torch.compile(model)


@pytest.mark.parametrize("dtype,tol", [("fp32", FP32_REL), ("bf16", BF16_REL)])
def test_compiled_matches_eager(eager_and_compiled, dtype, tol, no_tf32):
    """``torch.compile(build_model("tiny"))`` on CUDA gives eager's output
    within ``FP32_REL`` at fp32 and ``BF16_REL`` in bf16 autocast."""
    from depthlib.inference import run_batch

    model, compiled = eager_and_compiled
    x = torch.randn(2, 3, 140, 140, generator=torch.Generator().manual_seed(4)).cuda()
    eager = run_batch(model, x, dtype)
    out = run_batch(compiled, x, dtype)
    assert out.dtype == torch.float32 and out.shape == eager.shape
    assert torch.isfinite(out).all() and eager.norm() > 0
    assert rel_err(out, eager) < tol, rel_err(out, eager)
