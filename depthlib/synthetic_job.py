"""The synthetic-data Ray job: render N scenes in parallel and write them to object storage.

Entry script: ``ray_jobs/make_synthetic.py`` (parses :class:`MakeSyntheticConfig`
and calls :func:`make_synthetic`). Output layout under ``--output``::

    shards/shard-t00000-*.parquet   --format shards: image + exact metric depth + valid mask
    images/00000000.png             --format images: images only (an unlabeled bucket)
    _tasks/t00000.json              a task's done marker, written after all its outputs
    _job.json                       what this output holds (checked when re-run)
    summary.json                    counts, timing, settings

Work is split into tasks of ``scenes_per_task`` consecutive scenes; scene
``i`` uses seed :func:`scene_seed` ``(seed, i)`` and key ``f"{i:08d}"``, so
any task can be redone and gives identical bytes. A task whose marker exists
is skipped; a task killed half-way left only objects with deterministic
names (``images/<key>`` or its own ``shards/shard-tNNNNN-MMMMM.parquet``),
which the redone task overwrites, so a re-run never duplicates a scene.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from depthlib import storage
from depthlib.synthetic import STYLES, encode_image, render_scene

_SEED_STRIDE = 1_000_003  # prime > any realistic count: runs with different --seed share no scene


def scene_seed(seed: int, index: int) -> int:
    """The renderer seed of scene ``index`` in a run with ``--seed seed``."""
    return seed * _SEED_STRIDE + index


def scene_key(index: int) -> str:
    return f"{index:08d}"


@dataclass(kw_only=True)
class MakeSyntheticConfig:
    """Render procedural scenes with exact metric depth into object storage."""

    output: str = field(metadata={
        "help": "URI of the output prefix: a local dir, file://, s3://bucket/prefix or gs://bucket/prefix"})
    count: int = field(default=1000, metadata={"help": "number of scenes"})
    size: str = field(default="518x518", metadata={"help": "image size as HxW (height x width)"})
    seed: int = field(default=0, metadata={"help": "run seed; scene i renders with seed*1000003+i"})
    style: Literal["synthetic", "photo", "street"] = field(default="synthetic", metadata={
        "help": "synthetic: teacher training data; photo: stand-in for real photos (natural look); "
                "street: one driving camera rig, photo look (metric fine-tuning data)"})
    format: Literal["shards", "images"] = field(default="shards", metadata={
        "help": "shards: Parquet rows with image, depth and valid mask; images: image files only"})
    image_format: Optional[Literal["png", "jpeg"]] = field(default=None, metadata={
        "help": "image encoding; default png for --style synthetic, jpeg for photo and street"})
    jpeg_quality: int = field(default=92, metadata={"help": "JPEG quality (1-95)"})
    scenes_per_task: int = field(default=64, metadata={"help": "scenes per Ray task (the unit of retry and resume)"})
    shard_target_mb: float = field(default=64.0, metadata={"help": "approximate size of one Parquet shard, MiB"})
    height: int = field(init=False, default=0)
    width: int = field(init=False, default=0)

    def __post_init__(self):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(self.size))
        if not m:
            raise ValueError(f"--size must look like HxW (e.g. 518x518), got {self.size!r}")
        self.height, self.width = int(m.group(1)), int(m.group(2))
        if not (8 <= self.height <= 8192 and 8 <= self.width <= 8192):
            raise ValueError(f"--size sides must be within 8..8192, got {self.size!r}")
        self.size = f"{self.height}x{self.width}"
        if not self.output:
            raise ValueError("--output is required")
        if self.count < 1:
            raise ValueError(f"--count must be >= 1, got {self.count}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.style not in STYLES:
            raise ValueError(f"--style must be one of {STYLES}, got {self.style!r}")
        if self.format not in ("shards", "images"):
            raise ValueError(f"--format must be shards or images, got {self.format!r}")
        if self.image_format is None:
            self.image_format = "png" if self.style == "synthetic" else "jpeg"
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"--image-format must be png or jpeg, got {self.image_format!r}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"--jpeg-quality must be within 1..95, got {self.jpeg_quality}")
        if self.scenes_per_task < 1:
            raise ValueError(f"--scenes-per-task must be >= 1, got {self.scenes_per_task}")
        if not self.shard_target_mb > 0:
            raise ValueError(f"--shard-target-mb must be > 0, got {self.shard_target_mb}")

    @property
    def num_tasks(self) -> int:
        return -(-self.count // self.scenes_per_task)

    def task_range(self, task: int) -> range:
        start = task * self.scenes_per_task
        return range(start, min(start + self.scenes_per_task, self.count))

    def fingerprint(self) -> dict:
        """The settings that decide what every output object contains; a re-run must match them."""
        keys = ("count", "size", "seed", "style", "format", "image_format", "jpeg_quality", "scenes_per_task")
        return {k: getattr(self, k) for k in keys}


def _marker_uri(output: str, task: int) -> str:
    return storage.join(output, "_tasks", f"t{task:05d}.json")


def _shard_prefix(task: int) -> str:
    return f"shard-t{task:05d}"


def _image_ext(image_format: str) -> str:
    return "jpg" if image_format == "jpeg" else "png"


def render_task(config: MakeSyntheticConfig, task: int) -> dict:
    """Render and write the scenes of one task; skip it if its done marker exists.

    A plain function (Ray wraps it in :func:`make_synthetic`), so it can be run
    and tested without a cluster.
    """
    marker = _marker_uri(config.output, task)
    scenes = config.task_range(task)
    if storage.exists(marker):
        return {"task": task, "skipped": True, "scenes": len(scenes), "outputs": 0, "render_seconds": 0.0}
    t0 = time.perf_counter()
    render_s = 0.0
    if config.format == "images":
        outputs = []
        for i in scenes:
            r0 = time.perf_counter()
            scene = render_scene(scene_seed(config.seed, i), config.height, config.width, config.style)
            render_s += time.perf_counter() - r0
            uri = storage.join(config.output, "images", f"{scene_key(i)}.{_image_ext(config.image_format)}")
            storage.write_bytes(uri, encode_image(scene.image, config.image_format, config.jpeg_quality))
            outputs.append(uri)
    else:
        from depthlib import shards

        shard_dir = storage.join(config.output, "shards")
        writer = shards.ShardWriter(shard_dir, target_bytes=int(config.shard_target_mb * 2**20),
                                    name_prefix=_shard_prefix(task))
        for i in scenes:
            r0 = time.perf_counter()
            seed = scene_seed(config.seed, i)
            scene = render_scene(seed, config.height, config.width, config.style)
            render_s += time.perf_counter() - r0
            image = encode_image(scene.image, config.image_format, config.jpeg_quality)
            writer.add(shards.make_row(
                scene_key(i), image, config.image_format, scene.depth, depth_type="metric_depth",
                kind="synthetic", valid=scene.valid, image_size=(config.height, config.width),
                tolerance=1e-4,  # exact rendered depth: 1e-4 relative (the metric default is 1e-3)
                provenance={"generator": "depthlib.synthetic", "seed": seed, "style": config.style,
                            "depth": "planar_z_metres",
                            "intrinsics": [[round(float(v), 6) for v in row] for row in scene.intrinsics]}))
        outputs = writer.close()
        _drop_stale_shards(shard_dir, _shard_prefix(task), len(outputs))
    record = {"task": task, "start": scenes.start, "stop": scenes.stop, "outputs": list(outputs),
              "seconds": round(time.perf_counter() - t0, 3), "render_seconds": round(render_s, 3)}
    storage.write_bytes(marker, json.dumps(record, indent=1).encode())  # last: marks the task done
    return {"task": task, "skipped": False, "scenes": len(scenes), "outputs": len(outputs),
            "render_seconds": render_s}


def _drop_stale_shards(shard_dir: str, prefix: str, first: int) -> None:
    """Delete ``{prefix}-{n:05d}.parquet`` for n >= ``first``: left by an interrupted attempt.

    Shard names and contents are deterministic, so a redone task overwrites
    what an interrupted attempt wrote; only a different split (another
    library version encoding the images to other sizes) could leave extra
    numbers behind. Probing upward costs one request when there are none.
    """
    n = first
    while True:
        uri = storage.join(shard_dir, f"{prefix}-{n:05d}.parquet")
        if not storage.exists(uri):
            return
        storage.delete(uri)
        n += 1


def _check_job_record(config: MakeSyntheticConfig) -> None:
    """Refuse to resume into an output written with different settings (it would mix two datasets)."""
    uri = storage.join(config.output, "_job.json")
    want = config.fingerprint()
    if storage.exists(uri):
        have = json.loads(storage.read_bytes(uri)).get("settings")
        if have != want:
            raise ValueError(f"{config.output} holds a run with other settings {have}; use another --output "
                             f"or the same settings {want}")
        return
    storage.write_bytes(uri, json.dumps({"settings": want}, indent=2, sort_keys=True).encode())


def make_synthetic(config: MakeSyntheticConfig, *, progress: bool = True) -> dict:
    """Render ``config.count`` scenes with Ray tasks and write them; returns the summary.

    Uses the Ray cluster this process is connected to (``ray.init`` is the
    caller's job). Re-running with the same config resumes: finished tasks
    are skipped.
    """
    import ray

    _check_job_record(config)
    t0 = time.perf_counter()
    remote = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=True)(render_task)
    pending = [remote.remote(config, task) for task in range(config.num_tasks)]
    results = []
    next_report = 0.1
    while pending:
        done, pending = ray.wait(pending, num_returns=min(len(pending), 16), timeout=30.0)
        results.extend(ray.get(done))
        frac = len(results) / config.num_tasks
        if progress and (frac >= next_report or not pending):
            print(f"make_synthetic: {len(results)}/{config.num_tasks} tasks, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            next_report = frac + 0.1
    seconds = time.perf_counter() - t0
    rendered = sum(r["scenes"] for r in results if not r["skipped"])
    render_s = sum(r["render_seconds"] for r in results)
    summary = {
        "count": config.count, "size": config.size, "height": config.height, "width": config.width,
        "style": config.style, "format": config.format, "image_format": config.image_format,
        "seed": config.seed, "tasks": config.num_tasks,
        "tasks_skipped": sum(1 for r in results if r["skipped"]),
        "scenes_rendered": rendered, "outputs_written": sum(r["outputs"] for r in results),
        "seconds": round(seconds, 3),
        "scenes_per_second": round(rendered / seconds, 2) if seconds > 0 else None,
        "render_ms_per_scene": round(1000.0 * render_s / rendered, 2) if rendered else None,
        "config": {k: v for k, v in asdict(config).items()},
    }
    storage.write_bytes(storage.join(config.output, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary
