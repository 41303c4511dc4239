"""Configuration of the evaluation job: one typed source of defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from depthlib.evaluation.datasets import DATASETS, DatasetError, dataset_spec
from depthlib.models.specs import MODEL_SPECS


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, uri = v.partition("=")
        if not sep or not name or not uri:
            raise ValueError(f"{flag} takes NAME=URI, got {v!r}")
        try:
            dataset_spec(name)
        except DatasetError as e:
            raise ValueError(f"{flag} {v!r}: {e}") from None
        if name in out:
            raise ValueError(f"{flag}: {name!r} given twice")
        out[name] = uri
    return out


@dataclass(kw_only=True)
class EvaluateConfig:
    """Evaluate a depth model on the standard benchmarks and DA-2K (zero-shot protocol)."""

    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "model weights: released-format .pth (local path, s3:// or gs://); omit with --predictions"})
    encoder: str = field(metadata={"help": f"model size: {' | '.join(MODEL_SPECS)} (also picks the paper's row)"})
    dataset: list[str] = field(metadata={
        "help": f"NAME=URI, repeatable; NAME in {', '.join(DATASETS)}, or NAME.LABEL to evaluate several "
                f"datasets of one layout (shards.photo=URI); URI: the dataset's folder, .tar "
                f"(or DA-2K .zip), local, s3:// or gs://"})
    split: list[str] = field(default_factory=list, metadata={
        "help": "NAME=URI of a split list (paths relative to the root), repeatable; default: every sample found"})
    output: str = field(metadata={"help": "URI for report.json, report.md, per-dataset CSVs and pictures"})
    depth_range: list[str] = field(default_factory=list, metadata={
        "help": "NAME=MIN,MAX: depth range (m) of the pixels scored on dataset NAME instead of its standard "
                "one (e.g. shards=0.1,100), repeatable"})
    metric: bool = field(default=False, metadata={
        "help": "a metric-depth model: predictions in metres, no alignment, clamped to the dataset's range"})
    max_depth: float = field(default=20.0, metadata={"help": "metric model: depth of a sigmoid output of 1, m"})
    input_size: int = field(default=518, metadata={"help": "shorter side the model sees (multiple of 14)"})
    alignment: Optional[Literal["disparity", "depth"]] = field(default=None, metadata={
        "help": "relative models: least-squares scale and shift in disparity space (default, the paper's) "
                "or in depth space (Marigold's least_square)"})
    limit: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N samples per dataset"})
    kitti_crop: Literal["eigen", "garg"] = field(default="eigen", metadata={
        "help": "KITTI evaluation crop after the 352x1216 benchmark crop"})
    sintel_pass: Literal["final", "clean"] = field(default="final", metadata={
        "help": "Sintel pass used when no split list is given"})
    predictions: Optional[str] = field(default=None, metadata={
        "help": "score saved predictions instead of running a model: <URI>/<dataset>/<image key>.npy, "
                "H x W float (disparity, or metres with --metric), for the evaluated image (KITTI: its "
                "352x1216 crop)"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={
        "help": "autocast dtype on CUDA; fp32 matches the official inference path (the CPU always runs fp32)"})
    batch_size: int = field(default=8, metadata={"help": "images per forward pass (one input shape per pass)"})
    min_actors: int = field(default=1, metadata={"help": "minimum model actors"})
    max_actors: int = field(default=1, metadata={"help": "maximum model actors"})
    gpus_per_actor: Optional[float] = field(default=None, metadata={
        "help": "GPUs per actor; default 1 if the cluster has GPUs, else 0 (CPU actors)"})
    cpus_per_actor: Optional[float] = field(default=None, metadata={
        "help": "CPUs reserved per actor; default 1 with GPUs, else the node's CPUs minus one"})
    samples_per_task: int = field(default=8, metadata={"help": "samples read and decoded by one CPU task"})
    max_pixels: int = field(default=100_000_000, metadata={"help": "larger images are skipped (too_large)"})
    pictures: int = field(default=6, metadata={"help": "sample strips per dataset in samples.png (and worst.png)"})
    worst: int = field(default=10, metadata={"help": "worst images listed per dataset in the report"})

    def __post_init__(self):
        if self.encoder not in MODEL_SPECS:
            raise ValueError(f"--encoder must be one of {sorted(MODEL_SPECS)}, got {self.encoder!r}")
        if (self.checkpoint is None) == (self.predictions is None):
            raise ValueError("give exactly one of --checkpoint (run a model) and --predictions (score saved maps)")
        if self.input_size % 14 or self.input_size < 14:
            raise ValueError(f"--input-size must be a positive multiple of 14, got {self.input_size}")
        if self.metric and self.alignment is not None:
            raise ValueError("--alignment is for relative models; metric predictions are scored as metres, unaligned")
        if not self.dataset:
            raise ValueError("give at least one --dataset NAME=URI")
        datasets, splits = self.datasets(), self.splits()
        extra = sorted(set(splits) - set(datasets))
        if extra:
            raise ValueError(f"--split given for {extra} without a --dataset of that name")
        ranges = self.depth_ranges()
        extra = sorted(set(ranges) - set(datasets))
        if extra:
            raise ValueError(f"--depth-range given for {extra} without a --dataset of that name")
        pairs = sorted(n for n in ranges if dataset_spec(n).layout == "da2k")
        if pairs:
            raise ValueError(f"--depth-range {pairs}: DA-2K scores point pairs, it has no depth range")
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"need 1 <= --min-actors <= --max-actors, got {self.min_actors}, {self.max_actors}")
        for name in ("batch_size", "samples_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.pictures < 0 or self.worst < 0:
            raise ValueError("--pictures and --worst must be >= 0")

    def datasets(self) -> dict[str, str]:
        """Dataset name -> root URI, in the order given."""
        return _pairs(self.dataset, "--dataset")

    def splits(self) -> dict[str, str]:
        """Dataset name -> split list URI."""
        return _pairs(self.split, "--split")

    def depth_ranges(self) -> dict[str, tuple[float, float]]:
        """Dataset name -> (min, max) depth scored, for the datasets given a ``--depth-range``."""
        out: dict[str, tuple[float, float]] = {}
        for name, value in _pairs(self.depth_range, "--depth-range").items():
            try:
                lo, hi = (float(x) for x in value.split(","))
            except ValueError:
                raise ValueError(f"--depth-range takes NAME=MIN,MAX in metres, got {name}={value!r}") from None
            if not 0 <= lo < hi:
                raise ValueError(f"--depth-range {name}: need 0 <= MIN < MAX, got {lo}, {hi}")
            out[name] = (lo, hi)
        return out

    @property
    def alignment_used(self) -> str:
        """The protocol's alignment: ``none`` for metric models, else the chosen space."""
        return "none" if self.metric else (self.alignment or "disparity")
