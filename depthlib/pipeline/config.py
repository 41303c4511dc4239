"""Configuration of the whole pipeline: one typed source of defaults, and the presets.

``PipelineConfig`` holds every setting of ``ray_jobs/pipeline.py`` (its
fields are the flags; ``depthlib.cli.parse_layered_config``: defaults <
``--preset`` < ``--config FILE.yaml`` < flags). It names the recipes of the
training stages by their ``depthlib.training.config.PRESETS`` names and
never repeats their numbers: a training stage's config is that preset plus
the stage's data, output, steps and workers (``depthlib.pipeline.stages``).

Presets (``PRESETS``):

* ``demo``: this machine. Local Ray, a local directory, the ``tiny`` model
  (``tiny_cpu`` recipe) at 126 px; procedural synthetic scenes for the
  teacher, a rendered bucket of photo-style JPEGs as the "real" images,
  rendered street scenes (one driving rig) for the metric fine-tune.
* ``smoke``: the same at a few steps and a few dozen images, for tests and
  for checking that a cluster runs the pipeline at all (a few minutes on CPUs).
* ``gpu_vitl``: ViT-S and ViT-B students from a ViT-L teacher at 518 on a
  bucket of real images (``--unlabeled``), the metric model fine-tuned from
  the ViT-S student with the Hypersim recipe.
* ``paper``: the paper's recipe: a ViT-G teacher (160K iterations at batch
  64), ViT-S/B/L students (480K iterations at batch 192), the metric model
  fine-tuned from the ViT-L student.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional

from depthlib.models.specs import MODEL_SPECS

STAGE_KINDS = ("pretrain", "teacher", "student", "metric")  # the training stages a --train-set may address


def _size(value: str, flag: str) -> str:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
    if not m:
        raise ValueError(f"--{flag} must look like HxW (e.g. 518x518), got {value!r}")
    return f"{int(m.group(1))}x{int(m.group(2))}"


@dataclass(kw_only=True)
class PipelineConfig:
    """Run Depth Anything V2 end to end: synthetic data, teacher, pseudo labels, students, metric, evaluation."""

    storage: str = field(metadata={
        "help": "where every stage writes (a local directory, s3://bucket/prefix or gs://bucket/prefix); "
                "re-running the same command skips finished stages and resumes the interrupted one"})
    rerun: list[str] = field(default_factory=list, metadata={
        "help": "re-run these finished stages and every stage after them that uses their outputs (their old "
                "outputs are moved to <storage>/_replaced/); a group name (evaluate) means all its stages"})
    discard_replaced: bool = field(default=False, metadata={
        "help": "with --rerun: delete the old outputs instead of moving them to <storage>/_replaced/"})
    seed: int = field(default=0, metadata={
        "help": "seed of the rendered data sets (each set gets its own seed from it) and of the untrained model"})

    # Data.
    synthetic_data: list[str] = field(default_factory=list, metadata={
        "help": "teacher training shards to use instead of rendering procedural scenes, e.g. the "
                "ray_jobs/import_dataset.py outputs (URI/shards), each optionally URI:WEIGHT (see train.py --data)"})
    synthetic_count: int = field(default=100_000, metadata={"help": "procedural training scenes to render"})
    synthetic_size: str = field(default="518x518", metadata={"help": "HxW of the rendered training scenes"})
    heldout_count: int = field(default=500, metadata={
        "help": "held-out scenes with exact depth rendered in each style (synthetic, photo, street) for evaluation"})
    heldout_size: str = field(default="518x518", metadata={"help": "HxW of the synthetic-style held-out scenes"})
    heldout_photo_size: str = field(default="518x686", metadata={
        "help": "HxW of the photo-style and street held-out scenes"})
    pairs_per_image: int = field(default=20, metadata={
        "help": "DA-2K-style point pairs sampled on each held-out image's exact depth"})
    pair_min_ratio: float = field(default=1.2, metadata={
        "help": "a pair's farther point is at least this many times deeper than its closer point"})
    unlabeled: Optional[str] = field(default=None, metadata={
        "help": "the bucket of unlabeled real images to pseudo-label (URI); without it --bucket-count "
                "photo-style stand-ins are rendered"})
    bucket_count: int = field(default=0, metadata={
        "help": "photo-style images rendered as the unlabeled bucket when --unlabeled is not given"})
    bucket_size: str = field(default="480x640", metadata={"help": "HxW of the rendered photo-style bucket"})
    scenes_per_task: int = field(default=64, metadata={"help": "scenes per rendering task (unit of resume)"})

    # Training stages: recipes by name from depthlib.training.config.PRESETS.
    pretrain_steps: int = field(default=0, metadata={
        "help": "steps of the self-supervised pretraining stage (masked-image modelling, train.py --stage "
                "pretrain), run first for every encoder that --pretrained does not give; teacher and students "
                "of that encoder start from it and students align their features to it. 0: no such stage"})
    pretrain_preset: Optional[str] = field(default=None, metadata={
        "help": "training preset of the pretraining stage (default: the teacher's)"})
    pretrain_workers: int = field(default=1, metadata={"help": "Ray Train workers (GPUs) of the pretraining stage"})
    pretrain_on: Literal["synthetic", "bucket", "both"] = field(default="synthetic", metadata={
        "help": "images the pretraining stage reads: the teacher's training images (labels unread), the "
                "unlabeled bucket, or both; synthetic measured best at demo scale (docs/training.md)"})
    pretrain_data: list[str] = field(default_factory=list, metadata={
        "help": "instead of --pretrain-on: what the pretraining stage reads, each optionally URI:WEIGHT: shards "
                "(labels unread) or prefixes of unlabeled images (loose files, tars, Parquet)"})
    teacher_preset: str = field(default="teacher_vitl", metadata={"help": "training preset of the teacher"})
    teacher_steps: Optional[int] = field(default=None, metadata={"help": "teacher steps (default: the preset's)"})
    teacher_workers: int = field(default=1, metadata={"help": "Ray Train workers (GPUs) of the teacher"})
    student_presets: list[str] = field(default_factory=lambda: ["student_vits"], metadata={
        "help": "training presets of the students, one student each (its stage is student_<encoder>)"})
    student_steps: Optional[int] = field(default=None, metadata={"help": "student steps (default: the preset's)"})
    student_workers: int = field(default=1, metadata={"help": "Ray Train workers (GPUs) of each student"})
    metric_preset: str = field(default="metric_hypersim", metadata={
        "help": "training preset of the metric fine-tune (its encoder is the student's)"})
    metric_steps: Optional[int] = field(default=None, metadata={"help": "metric steps (default: the preset's)"})
    metric_workers: int = field(default=1, metadata={"help": "Ray Train workers (GPUs) of the metric fine-tune"})
    metric_max_depth: Optional[float] = field(default=None, metadata={
        "help": "metric model: depth of a sigmoid output of 1, m (default: the metric preset's, 20 m for "
                "Hypersim); it is also the far end of the depth range the metric model is evaluated on"})
    metric_from: Optional[str] = field(default=None, metadata={
        "help": "encoder of the student the metric model is fine-tuned from (the paper fine-tunes its "
                "students); default: the first student"})
    metric_data: list[str] = field(default_factory=list, metadata={
        "help": "metric-depth shards for the fine-tune (e.g. imported Hypersim or Virtual KITTI 2, with "
                "--metric-max-depth 20 or 80); without them "
                "--metric-count street scenes are rendered (one driving camera rig, so metric scale is in the image)"})
    metric_count: int = field(default=20_000, metadata={
        "help": "street scenes rendered for the metric fine-tune when --metric-data is not given"})
    metric_size: str = field(default="518x686", metadata={"help": "HxW of the rendered street scenes"})
    pretrained: list[str] = field(default_factory=list, metadata={
        "help": "ENCODER=URI of DINOv2 weights every model of that encoder starts from (e.g. "
                "vitl=s3://.../dinov2_vitl14_pretrain.pth); without them training starts from random weights"})
    train_set: list[str] = field(default_factory=list, metadata={
        "help": "STAGE.SETTING=VALUE for a training stage (teacher, student, metric or a student's stage "
                "name), e.g. teacher.lr=1e-5 student.cutmix=true; any ray_jobs/train.py setting"})

    # Labelling and evaluation.
    input_size: Optional[int] = field(default=None, metadata={
        "help": "shorter side the models see when labelling and evaluating (default: the teacher's crop)"})
    label_actors: int = field(default=1, metadata={"help": "labelling actors (one GPU each on a GPU cluster)"})
    label_batch_size: int = field(default=16, metadata={"help": "images per labelling forward pass"})
    label_partition_size: int = field(default=256, metadata={"help": "keys per labelling unit of work"})
    label_dtype: Literal["bf16", "fp16", "fp32"] = field(default="bf16", metadata={
        "help": "labelling autocast dtype on CUDA (the CPU runs fp32)"})
    eval_actors: int = field(default=1, metadata={"help": "model actors of each evaluation"})
    eval_batch_size: int = field(default=8, metadata={"help": "images per evaluation forward pass"})
    benchmark: list[str] = field(default_factory=list, metadata={
        "help": "NAME=URI of more evaluation datasets (ray_jobs/evaluate.py --dataset), e.g. "
                "nyu=s3://bench/nyu.tar da2k=s3://bench/DA-2K.zip; evaluated for every model"})
    benchmark_split: list[str] = field(default_factory=list, metadata={
        "help": "NAME=URI split lists of --benchmark datasets (ray_jobs/evaluate.py --split)"})
    preset: Optional[str] = field(default=None, metadata={"help": "the preset these settings started from"})

    def __post_init__(self):
        if not self.storage:
            raise ValueError("--storage is required")
        for name in ("synthetic_size", "heldout_size", "heldout_photo_size", "bucket_size", "metric_size"):
            setattr(self, name, _size(getattr(self, name), name.replace("_", "-")))
        if self.pretrain_steps < 0:
            raise ValueError(f"--pretrain-steps must be >= 0, got {self.pretrain_steps}")
        for name in ("heldout_count", "pairs_per_image", "scenes_per_task", "teacher_workers", "student_workers",
                     "pretrain_workers",
                     "metric_workers", "label_actors", "label_batch_size", "label_partition_size", "eval_actors",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.synthetic_data and self.synthetic_count < 1:
            raise ValueError("--synthetic-count must be >= 1 (or give --synthetic-data)")
        if not self.metric_data and self.metric_count < 1:
            raise ValueError("--metric-count must be >= 1 (or give --metric-data)")
        if self.unlabeled is None and self.bucket_count < 1:
            raise ValueError("give --unlabeled URI (the bucket of real images to pseudo-label), or "
                             "--bucket-count N to render N photo-style stand-ins")
        if self.pair_min_ratio <= 1.0:
            raise ValueError(f"--pair-min-ratio must be > 1, got {self.pair_min_ratio}")
        if self.metric_max_depth is not None and not self.metric_max_depth > 0:
            raise ValueError(f"--metric-max-depth must be > 0, got {self.metric_max_depth}")
        for name in ("teacher_steps", "student_steps", "metric_steps", "input_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.input_size is not None and self.input_size % 14:
            raise ValueError(f"--input-size must be a multiple of 14, got {self.input_size}")
        if not self.student_presets:
            raise ValueError("--student-presets needs at least one training preset")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        self.pretrained_by_encoder()
        self.train_overrides()

    def pretrained_by_encoder(self) -> dict[str, str]:
        """``--pretrained`` as encoder -> URI."""
        out: dict[str, str] = {}
        for item in self.pretrained:
            enc, sep, uri = item.partition("=")
            if not sep or not uri or enc not in MODEL_SPECS:
                raise ValueError(f"--pretrained takes ENCODER=URI with ENCODER in {sorted(MODEL_SPECS)}, got {item!r}")
            out[enc] = uri
        return out

    def train_overrides(self) -> dict[str, dict[str, object]]:
        """``--train-set`` as stage -> {setting: value}, each value parsed as its setting's type."""
        from depthlib.training.config import TrainConfig

        hints = typing.get_type_hints(TrainConfig)
        known = {f.name for f in dataclasses.fields(TrainConfig) if f.init}
        out: dict[str, dict[str, object]] = {}
        for item in self.train_set:
            target, sep, value = item.partition("=")
            stage, dot, name = target.partition(".")
            name = name.replace("-", "_")
            if not sep or not dot or not stage or not name:
                raise ValueError(f"--train-set takes STAGE.SETTING=VALUE (e.g. teacher.lr=1e-5), got {item!r}")
            if stage not in STAGE_KINDS and not stage.startswith("student_"):
                raise ValueError(f"--train-set {item!r}: STAGE is one of {STAGE_KINDS} or a student's stage name "
                                 f"(student_<encoder>), got {stage!r}")
            if name not in known:
                raise ValueError(f"--train-set {item!r}: ray_jobs/train.py has no setting {name!r}")
            if name in ("stage", "data", "output", "val_data", "preset"):
                raise ValueError(f"--train-set {item!r}: the pipeline sets {name!r} itself")
            try:
                out.setdefault(stage, {})[name] = _parse_value(value, hints[name])
            except ValueError as e:
                raise ValueError(f"--train-set {item!r}: {e}") from None
        return out


def _parse_value(text: str, tp) -> object:
    """``text`` as a value of type ``tp`` (str, int, float, bool, Literal, list, or Optional of them)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        tp, origin = args[0], typing.get_origin(args[0])
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ValueError(f"choose one of {choices}")
        return text
    if origin in (list, tuple):
        return [t.strip() for t in text.split(",") if t.strip()]
    if tp is bool:
        low = text.strip().lower()
        if low not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return low in ("true", "yes", "1")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"expected {tp.__name__}, got {text!r}") from None
    return text


_TINY = dict(teacher_preset="tiny_cpu", student_presets=["tiny_cpu"], metric_preset="tiny_cpu",
             pretrain_workers=2, teacher_workers=2, student_workers=2, metric_workers=2,
             synthetic_size="126x126", heldout_size="126x126", heldout_photo_size="126x168", bucket_size="126x168",
             metric_size="126x168",
             label_batch_size=8, label_partition_size=32, eval_batch_size=16)
_GPU = dict(synthetic_size="518x518", heldout_count=500, heldout_size="518x518", heldout_photo_size="518x686",
            label_actors=8, label_batch_size=32, label_partition_size=256, eval_actors=2, eval_batch_size=8)

PRESETS: dict[str, dict] = {
    # `make demo`: the paper in miniature on this machine (about 10 minutes on 2 cores).
    "demo": dict(_TINY, synthetic_count=384, heldout_count=64, pairs_per_image=16, bucket_count=384, metric_count=384,
                 pretrain_steps=400, teacher_steps=400, student_steps=400, metric_steps=200),
    # Tests and a first check of a cluster: every stage, a few steps, a few dozen images.
    "smoke": dict(_TINY, synthetic_count=64, heldout_count=12, pairs_per_image=8, bucket_count=32, metric_count=32,
                  scenes_per_task=16, pretrain_steps=10, teacher_steps=20, student_steps=20, metric_steps=10),
    # ViT-S and ViT-B students from a ViT-L teacher at 518 on a bucket of real images (--unlabeled).
    "gpu_vitl": dict(_GPU, synthetic_count=100_000, teacher_preset="teacher_vitl", teacher_workers=8,
                     student_presets=["student_vits", "student_vitb"], student_workers=8,
                     metric_preset="metric_hypersim", metric_workers=8),
    # The paper: ViT-G teacher on 595K synthetic images, ViT-S/B/L students, metric from the ViT-L student.
    "paper": dict(_GPU, synthetic_count=595_000, teacher_preset="teacher_vitg", teacher_workers=16,
                  student_presets=["student_vits", "student_vitb", "student_vitl"], student_workers=8,
                  metric_preset="metric_hypersim", metric_workers=8, metric_from="vitl"),
}
