"""Configuration of the training job: one typed source of defaults, presets, resume checks.

``TrainConfig`` holds every setting of ``ray_jobs/train.py``; its fields are
the command-line flags (``depthlib.cli.parse_layered_config``): defaults <
``--preset`` < ``--config FILE.yaml`` < flags. ``PRESETS`` carry the paper's
recipes (Depth Anything V2, arXiv 2406.09414, section 4 and appendix; the
official ``metric_depth/train.py`` for metric fine-tuning).

Batch sizes: ``--batch-size`` is per worker and per forward pass. The
optimiser sees ``batch_size x workers x grad_accum`` images per step (the
*global batch*); give ``--global-batch-size`` instead of ``--grad-accum`` to
keep the paper's global batch whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from depthlib.models.specs import MODEL_SPECS, PATCH_SIZE

STAGES = ("pretrain", "teacher", "student", "metric")


@dataclass(kw_only=True)
class TrainConfig:
    """Pretrain an encoder, or train a Depth Anything V2 teacher, student or metric model, with Ray Train."""

    # What to train, on what, where to write.
    stage: Literal["pretrain", "teacher", "student", "metric"] = field(metadata={
        "help": "pretrain: self-supervised encoder on unlabeled images or the images of any shards, labels "
                "unread (masked-image "
                "modelling; writes encoder.pth for --pretrained-encoder); teacher: synthetic depth -> disparity "
                "(ssi+gm); student: pseudo-label shards (trimmed ssi+gm, feature alignment); metric: metric "
                "depth (SiLog)"})
    data: list[str] = field(metadata={
        "help": "training shards: a prefix (all .parquet under it) or a file, optionally URI:WEIGHT; "
                "repeatable. Weights (all sources or none) set each source's share of the rows sampled; "
                "without them every row is visited once per epoch (proportional to size). --stage pretrain "
                "also reads a prefix without shards as unlabeled images: loose files, .tar/.tar.gz archives "
                "(tars of tars too), Parquet with an image column, as the labelling job reads them"})
    output: str = field(metadata={"help": "run directory (local, s3:// or gs://): config.json, metrics.jsonl, "
                                          "checkpoints, model.pth, curves.png, samples/; re-running the same "
                                          "command resumes"})
    val_data: Optional[str] = field(default=None, metadata={
        "help": "held-out shards with metric depth for validation (zero-shot protocol, or metres for metric)"})
    encoder: str = field(default="vits", metadata={"help": f"model size: {' | '.join(MODEL_SPECS)}"})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "initial weights: a released-format .pth, this project's model.pth, or a run/checkpoint "
                "directory of this job; the metric stage takes its encoder only"})
    pretrained_encoder: Optional[str] = field(default=None, metadata={
        "help": "DINOv2 encoder weights (official dinov2_vit*14_pretrain.pth or timm's state dict)"})
    frozen_encoder: Optional[str] = field(default=None, metadata={
        "help": "student feature alignment target (DINOv2 or Depth Anything checkpoint); default: the encoder "
                "the student starts from (off for a random start); 'none' turns it off"})

    # Scale.
    workers: int = field(default=1, metadata={"help": "Ray Train workers (one per GPU on a GPU cluster)"})
    gpus_per_worker: Optional[float] = field(default=None, metadata={
        "help": "GPUs per worker; default 1 if the cluster has GPUs, else 0"})
    cpus_per_worker: Optional[float] = field(default=None, metadata={
        "help": "CPUs reserved per worker; default 1 with GPUs, else at most half the cluster's CPUs "
                "over the workers (the rest decode data); the worker runs that many torch threads (at least 1)"})
    data_cpus: float = field(default=1.0, metadata={"help": "CPUs per data-loading task (read, decode, augment)"})

    # Schedule.
    steps: int = field(default=1000, metadata={"help": "optimiser steps to train (global)"})
    batch_size: int = field(default=8, metadata={"help": "images per worker per forward pass"})
    grad_accum: int = field(default=1, metadata={"help": "forward passes per optimiser step"})
    global_batch_size: Optional[int] = field(default=None, metadata={
        "help": "images per optimiser step; sets --grad-accum = this / (batch size x workers)"})
    crop: int = field(default=518, metadata={"help": "training crop side (multiple of 14)"})
    lr: float = field(default=5e-6, metadata={"help": "encoder learning rate (the head gets x --head-lr-multiplier)"})
    head_lr_multiplier: float = field(default=10.0, metadata={"help": "head learning rate / encoder learning rate"})
    optimizer: Literal["adam", "adamw"] = field(default="adam", metadata={"help": "Adam (paper) or AdamW"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (AdamW: decoupled)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up from 0 over this many steps"})
    lr_power: float = field(default=0.9, metadata={"help": "poly decay lr * (1 - t)^power after warm-up; 0 = constant"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and augmentation"})

    # Objective.
    trim: Optional[float] = field(default=None, metadata={
        "help": "share of largest per-pixel ssi losses ignored per image; default 0.1 for students, else 0"})
    gm_ramp_steps: int = field(default=100, metadata={
        "help": "relative stages: the gradient-matching weight rises linearly from 0 to 2 over the first K steps "
                "(0: 2 from the start); a fresh head otherwise starts by fitting inverted disparity"})
    feature_weight: float = field(default=1.0, metadata={"help": "weight of the feature-alignment loss (student)"})
    feature_margin: float = field(default=0.85, metadata={"help": "cosine similarity above which a token adds no loss"})
    pretrain_target: Literal["pixels", "ema_features"] = field(default="pixels", metadata={
        "help": "pretrain: what a hidden patch is predicted as: its normalised pixels (MAE/SimMIM), or the tokens "
                "an EMA copy of the encoder gives the unmasked image (iBOT's/data2vec's masked-token objective)"})
    ema_momentum: float = field(default=0.996, metadata={
        "help": "pretrain with ema_features: the EMA's momentum at step 0, rising to 1 at the last step (cosine)"})
    image_column: str = field(default="image", metadata={
        "help": "pretrain: the image-bytes column of Parquet files in a --data source of unlabeled images"})
    mask_ratio: float = field(default=0.6, metadata={
        "help": "pretrain: share of each image's patches hidden from the encoder, whose pixels it predicts"})
    min_depth: float = field(default=1e-3, metadata={"help": "metric stage: smallest valid depth, m"})
    max_depth: float = field(default=20.0, metadata={"help": "metric stage: depth of a sigmoid output of 1, m "
                                                              "(Hypersim 20, Virtual KITTI 80)"})
    head_start_depth: Optional[float] = field(default=None, metadata={
        "help": "metric stage: depth (m) the fresh head outputs at step 0; default: the median valid depth "
                "of the first training rows"})

    # Augmentation (applied on CPU by the data tasks).
    color_jitter: bool = field(default=False, metadata={"help": "random brightness, contrast, saturation, hue"})
    blur: bool = field(default=False, metadata={"help": "random Gaussian blur"})
    cutmix: bool = field(default=False, metadata={"help": "CutMix pairs of images (students; loss per region)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip"})

    # Numerics and memory.
    dtype: Literal["bf16", "fp16", "fp32"] = field(default="bf16", metadata={
        "help": "autocast dtype on CUDA (the CPU always trains in fp32)"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute encoder blocks in backward (less memory, ~30%% more compute)"})
    fsdp: bool = field(default=False, metadata={"help": "shard parameters, gradients and optimiser state (FSDP2) "
                                                        "instead of DDP"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile each encoder block for training (inductor: fused kernels, faster steps after a "
                "one-off compilation at the start of each worker; validation stays eager); the same weights "
                "either way"})
    deterministic: bool = field(default=False, metadata={
        "help": "the same command gives the same model bit for bit (on the same machine type and worker count): "
                "each worker streams its own groups (group g goes to worker g %% workers) in order instead of "
                "taking blocks from a shared stream as they finish, and torch uses deterministic kernels. "
                "Data loading stays parallel; a worker whose next group is slow waits for it"})

    # Validation, checkpoints, logging.
    val_every: int = field(default=1000, metadata={"help": "validate every K steps (and at the end)"})
    val_limit: int = field(default=256, metadata={"help": "validate on at most this many held-out images"})
    learn_margin: float = field(default=0.05, metadata={
        "help": "flag the run as not learning (run_state.json, the final metrics row, the pipeline report) "
                "unless its last validation AbsRel (without --val-data: training loss) is at least this "
                "fraction below the step-0 one; a flag, not a stop"})
    val_min_depth: float = field(default=0.1, metadata={"help": "relative validation: smallest depth counted, m"})
    val_max_depth: float = field(default=100.0, metadata={"help": "relative validation: largest depth counted, m"})
    samples: int = field(default=4, metadata={"help": "validation images drawn in samples/ at each validation"})
    checkpoint_every: int = field(default=1000, metadata={"help": "checkpoint every K steps (and at the end)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints kept (the latest is always kept)"})
    log_every: int = field(default=50, metadata={"help": "a log line and a metrics row every K steps"})
    max_failures: int = field(default=3, metadata={"help": "worker-group restarts from the last checkpoint (-1: no limit)"})
    rows_per_group: int = field(default=256, metadata={
        "help": "rows per data-loading task (whole Parquet row groups); the unit of shuffling and of resume"})
    tracker: Literal["none", "tensorboard", "wandb"] = field(default="none", metadata={
        "help": "also log to TensorBoard (<output>/tensorboard) or Weights & Biases (rank 0)"})
    wandb_project: str = field(default="depth-anything-v2", metadata={"help": "W&B project for --tracker wandb"})
    fail_at_step: Optional[int] = field(default=None, metadata={
        "help": "fault drill: every worker fails once right after the checkpoint at this step, and the "
                "run must recover from it (FailureConfig)"})
    preset: Optional[str] = field(default=None, metadata={"help": "the preset these settings started from"})

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {self.stage!r}")
        if self.encoder not in MODEL_SPECS:
            raise ValueError(f"--encoder must be one of {sorted(MODEL_SPECS)}, got {self.encoder!r}")
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = list(self.data)
        if not self.data:
            raise ValueError("--data needs at least one URI")
        self.data_weights()
        if self.crop % PATCH_SIZE or self.crop < PATCH_SIZE:
            raise ValueError(f"--crop must be a positive multiple of {PATCH_SIZE}, got {self.crop}")
        for name in ("workers", "steps", "batch_size", "grad_accum", "val_every", "checkpoint_every",
                     "log_every", "keep_checkpoints", "rows_per_group", "val_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size is not None:
            per_pass = self.batch_size * self.workers
            if self.global_batch_size % per_pass:
                raise ValueError(f"--global-batch-size {self.global_batch_size} is not a multiple of "
                                 f"--batch-size x --workers = {per_pass}")
            self.grad_accum = self.global_batch_size // per_pass
        if self.trim is None:
            self.trim = 0.1 if self.stage == "student" else 0.0
        if not 0.0 <= self.trim < 1.0:
            raise ValueError(f"--trim must be in [0, 1), got {self.trim}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < --min-depth < --max-depth, got {self.min_depth}, {self.max_depth}")
        if not 0 <= self.val_min_depth < self.val_max_depth:
            raise ValueError("need 0 <= --val-min-depth < --val-max-depth")
        if self.gm_ramp_steps < 0:
            raise ValueError(f"--gm-ramp-steps must be >= 0, got {self.gm_ramp_steps}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.learn_margin < 1:
            raise ValueError(f"--learn-margin must be in [0, 1), got {self.learn_margin}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.head_lr_multiplier <= 0:
            raise ValueError("--warmup-steps must be >= 0, --lr and --head-lr-multiplier > 0")
        if self.fsdp and self.workers < 2:
            raise ValueError("--fsdp shards over workers: use --workers 2 or more")
        if self.fsdp and self.stage == "pretrain" and self.pretrain_target == "ema_features":
            raise ValueError("--pretrain-target ema_features runs its EMA encoder outside the sharded forward: "
                             "use DDP (no --fsdp)")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"--ema-momentum must be in [0, 1), got {self.ema_momentum}")

    def data_uris(self) -> list[str]:
        """The ``--data`` URIs without their weights."""
        return [split_data_weight(item)[0] for item in self.data]

    def data_weights(self) -> tuple[float, ...] | None:
        """One sampling weight per ``--data`` source, or None (sample by size)."""
        weights = [split_data_weight(item)[1] for item in self.data]
        if all(w is None for w in weights):
            return None
        if any(w is None for w in weights):
            raise ValueError(f"--data: give a weight to every source or to none, got {self.data}")
        if not sum(weights) > 0:
            raise ValueError(f"--data: the weights must have a positive sum, got {self.data}")
        return tuple(weights)

    @property
    def metric(self) -> bool:
        """The stage trains the metric head (sigmoid x max_depth, metres)."""
        return self.stage == "metric"

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.workers * self.grad_accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_data_weight(item: str) -> tuple[str, float | None]:
    """``"s3://b/hypersim:2.5"`` -> ``("s3://b/hypersim", 2.5)``; no ``:NUMBER``
    suffix -> ``(item, None)``. A weight must be a finite number >= 0."""
    uri, sep, tail = item.rpartition(":")
    if not sep or not uri or "/" in tail:  # no suffix, or the scheme's colon (s3://...)
        return item, None
    try:
        weight = float(tail)
    except ValueError:
        return item, None
    if not (weight >= 0 and weight < float("inf")):
        raise ValueError(f"--data {item!r}: the weight must be a finite number >= 0")
    return uri, weight


# Settings a resumed run may change; anything else must match the run's config.json.
RESUMABLE_CHANGES = frozenset({
    "steps", "workers", "gpus_per_worker", "cpus_per_worker", "data_cpus", "grad_accum", "global_batch_size",
    "val_every", "val_limit", "samples", "checkpoint_every", "keep_checkpoints", "log_every", "max_failures",
    "tracker", "wandb_project", "preset", "fail_at_step", "compile", "learn_margin",
})


def config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """Settings of ``config`` that differ from a run's saved ``config.json`` and
    may not change on resume (``RESUMABLE_CHANGES`` may)."""
    now = config.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    # a setting added after the run was made, now at its default, is what the run used
    saved = {**{k: defaults[k] for k in now if k not in saved and k in defaults}, **saved}
    return sorted(f"{k}: run has {saved.get(k)!r}, now {now.get(k)!r}"
                  for k in set(saved) | set(now)
                  if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


_PAPER = dict(crop=518, lr=5e-6, head_lr_multiplier=10.0, optimizer="adam", lr_power=0.9, grad_clip=1.0)
_STUDENT = dict(_PAPER, stage="student", steps=480_000, global_batch_size=192, batch_size=8, trim=0.1,
                color_jitter=True, blur=True, cutmix=True)
# Official metric_depth/train.py: AdamW (wd 0.01), lr 5e-6 (head x10), poly 0.9, 518 crops, batch 2 per GPU.
_METRIC = dict(stage="metric", crop=518, lr=5e-6, head_lr_multiplier=10.0, optimizer="adamw", weight_decay=0.01,
               lr_power=0.9, batch_size=2, min_depth=1e-3)

PRESETS: dict[str, dict] = {
    # Teacher: ViT-G on synthetic images, 160K iterations at batch 64 (paper).
    "teacher_vitg": dict(_PAPER, stage="teacher", encoder="vitg", steps=160_000, global_batch_size=64,
                         batch_size=4, activation_checkpointing=True),
    "teacher_vitl": dict(_PAPER, stage="teacher", encoder="vitl", steps=160_000, global_batch_size=64,
                         batch_size=8),
    # Students: 480K iterations at batch 192 on pseudo labels only.
    "student_vits": dict(_STUDENT, encoder="vits", batch_size=24),
    "student_vitb": dict(_STUDENT, encoder="vitb", batch_size=12),
    "student_vitl": dict(_STUDENT, encoder="vitl", batch_size=8),
    "student_vitg": dict(_STUDENT, encoder="vitg", batch_size=4, activation_checkpointing=True),
    # Metric fine-tuning: Hypersim (indoor, 20 m) and Virtual KITTI 2 (outdoor, 80 m).
    "metric_hypersim": dict(_METRIC, encoder="vitl", max_depth=20.0, steps=120_000),
    "metric_vkitti": dict(_METRIC, encoder="vitl", max_depth=80.0, steps=60_000),
    # This machine: the `tiny` model at 126 px on CPU workers (tests and `make demo`); CPU workers
    # on a GPU cluster too (--gpus-per-worker 1 moves it to GPUs).
    "tiny_cpu": dict(encoder="tiny", gpus_per_worker=0, crop=126, batch_size=8, lr=2e-4, head_lr_multiplier=10.0,
                     optimizer="adamw",
                     weight_decay=1e-4, warmup_steps=30, lr_power=0.9, grad_clip=1.0, rows_per_group=32,
                     val_every=100, checkpoint_every=100, log_every=10, val_limit=64),
}
