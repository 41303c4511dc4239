"""The three stages of the labelling pipeline as plain callables.

Ray Data wires them with ``map_batches``; each is usable without Ray, so
they are unit-tested directly. Batches are dicts of numpy arrays.

1. ``DecodePartition`` (CPU tasks): one partition ``{pid, keys}`` -> rows
   with the source bytes and the preprocessed model input (float32, released
   preprocessing), grouped by resized shape; undecodable inputs become rows
   with an ``error`` reason instead of raising (a raised exception would make
   Ray drop or fail the whole block).
2. ``LabelActor`` (GPU or CPU actors): the teacher, loaded once per actor;
   runs each same-shape group as one forward pass. Any rows with ``key``,
   ``error``, ``detail``, ``in_h``, ``in_w`` and ``pixels`` columns will do,
   and other columns pass through, so the evaluation job
   (``depthlib.evaluation.stages``) runs its samples through the same actor.
3. ``WritePieces`` (CPU tasks): encodes the labels and writes each
   partition's rows of the block as one shard file named after its keys, and
   returns a small record per piece for the driver to commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from typing import Iterator

import numpy as np

from depthlib import shards, storage
from depthlib.images import ImageDecodeError, decode_image
from depthlib.pseudo_label import plan as plan_mod
from depthlib.pseudo_label.telemetry import count
from depthlib.transforms import preprocess, target_size

MAX_MODEL_PIXELS_FACTOR = 16  # refuse inputs whose resized size exceeds 16 x input_size^2 (extreme aspect)


def _empty_rows() -> dict[str, list]:
    # Pixels travel as raw float32 bytes with their shape (in_h, in_w), so
    # blocks never need Ray's variable-shaped tensor columns.
    return {k: [] for k in ("pid", "key", "image", "image_h", "image_w",
                            "in_h", "in_w", "pixels", "error", "detail")}


INT_COLUMNS = ("pid", "image_h", "image_w", "in_h", "in_w")


def rows_to_batch(rows: dict[str, list], int_columns: tuple[str, ...] = INT_COLUMNS) -> dict[str, np.ndarray]:
    """Column lists -> a Ray Data numpy batch: ``int_columns`` as int64, the rest as object arrays
    (bytes and strings of any length, so blocks never need variable-shaped tensor columns)."""
    out = {}
    for k, v in rows.items():
        if k in int_columns:
            out[k] = np.asarray(v, dtype=np.int64)
        else:
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            out[k] = arr
    return out


def shape_groups(by_shape: dict[tuple[int, int], dict[str, list]], group_rows: int,
                 int_columns: tuple[str, ...] = INT_COLUMNS) -> Iterator[dict[str, np.ndarray]]:
    """Batches of at most ``group_rows`` rows, one input shape each: same-shape rows
    leave together so the model actor batches them without resizing."""
    for rows in by_shape.values():
        n = len(next(iter(rows.values())))
        for start in range(0, n, group_rows):
            yield rows_to_batch({k: v[start:start + group_rows] for k, v in rows.items()}, int_columns)


def model_input(image: np.ndarray, input_size: int) -> np.ndarray:
    """Decoded ``H x W x 3`` uint8 RGB -> ``3 x h x w`` float32 model input (released preprocessing).

    Raises ``ImageDecodeError("too_large")`` when the resized input would exceed
    ``MAX_MODEL_PIXELS_FACTOR * input_size**2`` (an extreme aspect ratio).
    """
    h, w = target_size(image.shape[0], image.shape[1], input_size)
    if h * w > MAX_MODEL_PIXELS_FACTOR * input_size ** 2:
        raise ImageDecodeError("too_large", f"{image.shape[1]}x{image.shape[0]} resizes to {w}x{h} "
                                            f"for the model (extreme aspect ratio)")
    return preprocess(image, input_size).numpy()


def actor_resources(gpus_per_actor: float | None, cpus_per_actor: float | None) -> tuple[float, float, int]:
    """(gpus, cpus, torch threads) for a model actor on the connected Ray cluster.

    Defaults: one GPU per actor if the cluster has GPUs, else a CPU actor with
    every core of its node but one (left for the CPU stages). Threads ``0``
    means all cores of the actor's node (CPU actors); a GPU actor only stages
    batches, and Ray's one thread is enough.
    """
    import ray

    gpus = gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = cpus_per_actor
    if cpus is None:
        cpus = 1.0 if gpus > 0 else max(1.0, node_cpus - 1)
    return gpus, cpus, 0 if gpus == 0 else 1


class DecodePartition:
    """Read, decode and preprocess every key of a partition (CPU)."""

    def __init__(self, input_uri: str, input_size: int, max_pixels: int, group_rows: int = 16,
                 s3: storage.S3Config | None = None):
        self.s3 = s3
        self.input_uri = input_uri
        self.input_size = input_size
        self.max_pixels = max_pixels
        self.group_rows = group_rows  # = the actor's batch size, so groups fill whole forward passes

    def _one(self, key: str) -> tuple[bytes, tuple[int, int], np.ndarray | None, str, str]:
        """(source bytes, decoded (h, w) with EXIF applied, model input or None, skip reason, detail)."""
        uri = key if "://" in key or key.startswith("/") else storage.join(self.input_uri, key)
        try:
            data = storage.read_bytes(uri)  # retries transient errors itself
        except Exception as e:  # a missing or unreadable object is a skip, not a crash
            return b"", (0, 0), None, "read_error", storage.redact(f"{type(e).__name__}: {e}")[:500]
        try:
            image = decode_image(data, max_pixels=self.max_pixels)
            return data, image.shape[:2], model_input(image, self.input_size), "", ""
        except ImageDecodeError as e:
            return data, (0, 0), None, e.reason, e.detail[:500]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        storage.set_default_s3(self.s3)
        for pid, keys in zip(batch["pid"], batch["keys"]):
            by_shape: dict[tuple[int, int], dict[str, list]] = {}
            for key in keys:
                data, hw, pixels, error, detail = self._one(str(key))
                if error:
                    count("skipped", 1, reason=error)
                shape = pixels.shape[1:] if pixels is not None else (0, 0)
                rows = by_shape.setdefault(shape, _empty_rows())
                rows["pid"].append(int(pid))
                rows["key"].append(str(key))
                rows["image"].append(data)
                rows["image_h"].append(hw[0])
                rows["image_w"].append(hw[1])
                rows["in_h"].append(shape[0])
                rows["in_w"].append(shape[1])
                rows["pixels"].append(pixels.tobytes() if pixels is not None else b"")
                rows["error"].append(error)
                rows["detail"].append(detail)
                count("bytes_read", len(data))
            yield from shape_groups(by_shape, self.group_rows)


class LabelActor:
    """The teacher: loaded once per actor, labels same-shape groups of a batch.

    Output rows carry the prediction as raw float32 bytes (``label``) at the
    resolution the model saw (``in_h x in_w``, the resized input), not the
    source resolution; the pixels column is dropped. Encoding is left to the
    CPU writer tasks so the accelerator never waits for it.
    """

    def __init__(self, checkpoint: str, encoder: str, metric: bool = False, max_depth: float = 20.0,
                 dtype: str = "bf16", batch_size: int = 16, num_threads: int | None = None,
                 s3: storage.S3Config | None = None):
        import torch

        from depthlib.inference import default_device
        from depthlib.models import load_released

        storage.set_default_s3(s3)
        if num_threads is not None:
            torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.device = default_device()
        self.model = load_released(checkpoint, encoder, metric=metric, max_depth=max_depth).to(self.device).eval()
        self.dtype = dtype
        self.batch_size = batch_size

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """``B x 3 x h x w`` float32 normalised inputs -> ``B x h x w`` float32 predictions."""
        import torch

        from depthlib.inference import run_batch

        x = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            x = x.pin_memory()
        return run_batch(self.model, x, self.dtype).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        label = np.empty(n, dtype=object)
        label[:] = [b""] * n
        error = batch["error"].copy()
        detail = batch["detail"].copy()
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(n):
            if not error[i]:
                groups.setdefault((int(batch["in_h"][i]), int(batch["in_w"][i])), []).append(i)
        for (h, w), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                x = np.stack([np.frombuffer(batch["pixels"][i], np.float32).reshape(3, h, w) for i in part])
                try:
                    preds = self.infer(x)
                except Exception as e:  # e.g. out of memory: record, keep the job alive
                    for i in part:
                        error[i], detail[i] = "inference_error", f"{type(e).__name__}: {e}"[:500]
                    count("skipped", len(part), reason="inference_error")
                    continue
                for i, p in zip(part, preds):
                    if np.isfinite(p).all():
                        label[i] = p.tobytes()
                    else:
                        error[i], detail[i] = "inference_error", "non-finite prediction"
                        count("skipped", 1, reason="inference_error")
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(label=label, error=error, detail=detail)
        return out


class WritePieces:
    """Write a block's labelled rows, one shard file per partition, and report them.

    Returns one record per (partition, block): the file written (or ""), the
    keys it covers, and the skipped keys with reasons; the driver commits a
    partition once records cover all its keys.
    """

    def __init__(self, output: str, provenance: dict, depth_type: str, sample_every: int,
                 s3: storage.S3Config | None = None):
        self.s3 = s3
        self.output = output
        self.provenance = provenance
        self.depth_type = depth_type
        self.sample_every = max(1, sample_every)

    def _sample(self, key: str, image_bytes: bytes, label: np.ndarray) -> None:
        from depthlib.visualize import side_by_side, to_png

        image = decode_image(image_bytes)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[-120:]
        png = to_png(side_by_side(image, label, invert=self.depth_type == "metric_depth"))
        storage.write_bytes(storage.join(self.output, "samples", f"{safe}.png"), png)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        storage.set_default_s3(self.s3)
        by_pid: dict[int, list[int]] = {}
        for i, pid in enumerate(batch["pid"]):
            by_pid.setdefault(int(pid), []).append(i)
        records = {"pid": [], "file": [], "n_labels": [], "keys": [], "errors": [], "label_bytes": []}
        now = time.time()
        for pid, idx in sorted(by_pid.items()):
            rows, errors = [], []
            for i in idx:
                key = str(batch["key"][i])
                if batch["error"][i]:
                    errors.append({"key": key, "reason": str(batch["error"][i]), "detail": str(batch["detail"][i])})
                    continue
                h, w = int(batch["in_h"][i]), int(batch["in_w"][i])
                label = np.frombuffer(batch["label"][i], np.float32).reshape(h, w)
                rows.append(shards.make_row(
                    key, batch["image"][i], None, label,  # format read from the image header
                    depth_type=self.depth_type, kind="pseudo",
                    image_size=(int(batch["image_h"][i]), int(batch["image_w"][i])),
                    provenance={**self.provenance, "time": now}))
                if zlib.crc32(key.encode()) % self.sample_every == 0:
                    self._sample(key, batch["image"][i], label)
            keys = sorted(str(batch["key"][i]) for i in idx)
            name, nbytes = "", 0
            if rows:
                digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
                name = plan_mod.piece_name(pid, digest)
                data = shards.table_to_parquet_bytes(shards.rows_to_table(rows))
                storage.write_bytes(storage.join(plan_mod.labels_dir(self.output), name), data)
                nbytes = data.size
                count("labelled", len(rows))
                count("label_bytes", nbytes)
            records["pid"].append(pid)
            records["file"].append(name)
            records["n_labels"].append(len(rows))
            records["keys"].append(json.dumps(keys))
            records["errors"].append(json.dumps(errors))
            records["label_bytes"].append(nbytes)
        return {k: np.asarray(v, dtype=np.int64 if k in ("pid", "n_labels", "label_bytes") else object)
                for k, v in records.items()}

