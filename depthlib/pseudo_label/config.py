"""Configuration of the pseudo-labelling job: one typed source of defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from depthlib.models.specs import MODEL_SPECS


@dataclass(kw_only=True)
class PseudoLabelConfig:
    """Label every image under an input prefix with a teacher model."""

    input: str = field(metadata={"help": (
        "URI of the unlabeled images: a local dir, file:// or s3://bucket/prefix. Objects are told apart by "
        "name: .tar, .tar.gz and .tgz are tar archives (every image member is a sample keyed ARCHIVE/MEMBER, "
        "through tars of tars ARCHIVE/INNER.tar/MEMBER; other members are ignored), .parquet files are tables "
        "(every row is a sample keyed FILE/ROW, its bytes in --image-column), anything else is one image")})
    output: str = field(metadata={"help": "URI where labels/, errors/, samples/ and summary.json are written"})
    checkpoint: str = field(metadata={"help": "teacher weights: released-format .pth (local path or URI)"})
    manifest: Optional[str] = field(default=None, metadata={
        "help": "Parquet (column 'key') or text file of keys relative to --input, instead of listing the prefix"})
    image_column: str = field(default="image", metadata={
        "help": "Parquet input: the column of encoded image bytes, binary or Hugging Face's struct {bytes, path}"})
    encoder: str = field(default="vitl", metadata={"help": f"teacher size: {' | '.join(MODEL_SPECS)}"})
    input_size: int = field(default=518, metadata={"help": "shorter side the model sees (multiple of 14)"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass (one resized shape per pass)"})
    min_actors: int = field(default=1, metadata={"help": "minimum labelling actors in the autoscaling pool"})
    max_actors: int = field(default=1, metadata={"help": "maximum labelling actors in the autoscaling pool"})
    gpus_per_actor: Optional[float] = field(default=None, metadata={
        "help": "GPUs per actor; default 1 if the cluster has GPUs, else 0 (CPU actors)"})
    cpus_per_actor: Optional[float] = field(default=None, metadata={
        "help": "CPUs reserved per actor; default 1 with GPUs, else the node's CPUs minus one for decoding"})
    dtype: Literal["bf16", "fp16", "fp32"] = field(default="bf16", metadata={
        "help": "autocast dtype on CUDA (the CPU always runs fp32)"})
    preprocessing: Literal["fast", "released"] = field(default="fast", metadata={
        "help": "fast: uint8 resize on the CPU, normalised on the device (labels move by 0.1%% of their max "
                "on average, under bf16's own rounding); released: the released float32 preprocessing "
                "(4x the bytes to the device, 4x the resize CPU)"})
    reduced_decode: bool = field(default=False, metadata={
        "help": "decode JPEGs of 4x the model's size or more at a reduced DCT scale (>= 2x the model's size): "
                "half the decode CPU of a 12 MP photo, but labels move by ~1.5%% of their max on average "
                "(needs --preprocessing fast)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the teacher in each actor (CUDA; the first batch of each input shape compiles)"})
    keys_per_task: int = field(default=64, metadata={
        "help": "images per decoding task: a partition is decoded by several tasks in parallel (smaller: "
                "smoother streaming and more parallelism within a partition; larger: less per-task overhead)"})
    limit: Optional[int] = field(default=None, metadata={"help": "label only the first N keys in listing order (containers expanded in place)"})
    partition_size: int = field(default=256, metadata={
        "help": "keys per unit of work; a unit is committed (or redone) as a whole"})
    partitions_per_wave: int = field(default=4096, metadata={
        "help": "partitions the driver tracks at once (one Ray Data run); bounds driver memory"})
    max_pixels: int = field(default=100_000_000, metadata={
        "help": "larger images are skipped as decompression bombs (reason too_large)"})
    samples: int = field(default=16, metadata={"help": "about this many image+label pictures in samples/"})
    metric: bool = field(default=False, metadata={"help": "the teacher is a metric-depth model (labels in metres)"})
    max_depth: float = field(default=20.0, metadata={"help": "metric teacher: depth of a sigmoid output of 1, m"})
    teacher_id: Optional[str] = field(default=None, metadata={
        "help": "name recorded in each label's provenance (default: the checkpoint's file name)"})

    def __post_init__(self):
        if self.input_size % 14:
            raise ValueError(f"--input-size must be a multiple of 14, got {self.input_size}")
        if self.encoder not in MODEL_SPECS:
            raise ValueError(f"--encoder must be one of {sorted(MODEL_SPECS)}, got {self.encoder!r}")
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"need 1 <= --min-actors <= --max-actors, got {self.min_actors}, {self.max_actors}")
        for name in ("batch_size", "partition_size", "partitions_per_wave", "keys_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        if self.reduced_decode and self.preprocessing != "fast":
            raise ValueError("--reduced-decode needs --preprocessing fast")
        if self.teacher_id is None:
            self.teacher_id = self.checkpoint.rstrip("/").rsplit("/", 1)[-1]

    def plan_fingerprint(self) -> dict:
        """The settings that define WHICH keys form which unit of work; a resumed run must match them."""
        fingerprint = {"input": self.input, "manifest": self.manifest, "limit": self.limit,
                       "partition_size": self.partition_size, "partitions_per_wave": self.partitions_per_wave}
        if self.image_column != "image":  # only when set, so plans frozen before the option still resume
            fingerprint["image_column"] = self.image_column
        return fingerprint
