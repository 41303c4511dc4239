"""The three stages of the labelling pipeline as plain callables.

Ray Data wires them with ``map_batches``; each is usable without Ray, so
they are unit-tested directly. Batches are dicts of numpy arrays.

1. ``DecodePartition`` (CPU tasks): some keys of one partition ``{pid, keys}``
   -> rows with the source bytes and the model input at the model's size,
   grouped by that size; undecodable inputs become rows with an ``error``
   reason instead of raising (a raised exception would make Ray drop or fail
   the whole block). The job gives each task a slice of a partition, so many
   small tasks decode in parallel.
2. ``LabelActor`` (GPU or CPU actors): the teacher, loaded once per actor;
   runs each same-shape group as one forward pass. Any rows with ``key``,
   ``error``, ``detail``, ``in_h``, ``in_w`` and ``pixels`` columns will do,
   and other columns pass through, so the evaluation job
   (``depthlib.evaluation.stages``) runs its samples through the same actor.

Model inputs travel in one of two formats (:data:`PREPROCESSING`), told
apart by their dtype: ``fast`` (the labelling default) ships ``3 x h x w``
uint8 pixels, resized from the decoded uint8 image, and the actor
normalises them on its device: a quarter of the bytes of float32 through
the object store and the host-to-device copy. ``released`` ships the
released float32 preprocessing (bicubic on float, ImageNet-normalised), as
the evaluation job does. Optionally (``reduced_decode``) a JPEG at least 4x
the model's size is decoded at a reduced DCT scale. The label differences
are measured by ``benchmarks/preprocessing_fidelity.py``.
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
from depthlib.images import ImageDecodeError, decode_image, decode_image_reduced
from depthlib.pseudo_label import plan as plan_mod
from depthlib.pseudo_label.telemetry import count
from depthlib.transforms import normalize, preprocess, target_size

MAX_MODEL_PIXELS_FACTOR = 16  # refuse inputs whose resized size exceeds 16 x input_size^2 (extreme aspect)
PASSES_PER_CALL = 4  # forward passes per actor call: Ray Data's batch for the actor is this many model batches
ACTOR_CALLS_AT_ONCE = 2  # batches an actor unpacks and packs while its model runs another (the model runs one)


def _empty_rows() -> dict[str, list]:
    return {k: [] for k in ("pid", "key", "image", "image_h", "image_w",
                            "in_h", "in_w", "pixels", "error", "detail")}


INT_COLUMNS = ("pid", "image_h", "image_w", "in_h", "in_w")
# Model inputs (3 x in_h x in_w) and predictions (in_h x in_w) travel as tensor columns: a block of
# one shape is one array that Ray Data passes through Arrow and the object store without copying
# it element by element (bytes columns cost ~1.3 ms per MB each way); skipped rows hold empty arrays.
TENSOR_COLUMNS = ("pixels", "label")


def tensor_column(arrays: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Arrays -> one stacked array when they share shape and dtype (a fixed-shape tensor
    column), else an object array of them (a variable-shaped one). An already stacked
    array (``N x ...``, not of objects) is returned as it is, without a copy."""
    if isinstance(arrays, np.ndarray) and arrays.dtype != object:
        return arrays
    if len(arrays) and all(a.shape == arrays[0].shape and a.dtype == arrays[0].dtype for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def rows_to_batch(rows: dict[str, list], int_columns: tuple[str, ...] = INT_COLUMNS) -> dict[str, np.ndarray]:
    """Column lists -> a Ray Data numpy batch: ``int_columns`` as int64, :data:`TENSOR_COLUMNS`
    as tensors, the rest as object arrays (bytes and strings of any length)."""
    out = {}
    for k, v in rows.items():
        if k in int_columns:
            out[k] = np.asarray(v, dtype=np.int64)
        elif k in TENSOR_COLUMNS:
            out[k] = tensor_column(v)
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


PREPROCESSING = ("fast", "released")


def model_input(image: np.ndarray, input_size: int, preprocessing: str = "released",
                image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded ``H x W x 3`` uint8 RGB -> the model input at the model's size ``h x w``
    (shorter side ``input_size``, sides multiples of 14: :func:`target_size`) of an
    image of ``image_size`` (default ``(H, W)``; larger when ``image`` was decoded
    at a reduced scale, ``fast`` only).

    ``released``: ``3 x h x w`` float32, the released preprocessing (bicubic on
    float, ImageNet normalisation). ``fast``: ``3 x h x w`` uint8, bicubic on
    uint8 (torch's uint8 kernel, no antialiasing, as the released resize);
    :func:`pixels_to_model` finishes it on the model's device.
    Raises ``ImageDecodeError("too_large")`` when the resized input would exceed
    ``MAX_MODEL_PIXELS_FACTOR * input_size**2`` (an extreme aspect ratio).
    """
    full_h, full_w = image_size or image.shape[:2]
    h, w = target_size(full_h, full_w, input_size)
    if h * w > MAX_MODEL_PIXELS_FACTOR * input_size ** 2:
        raise ImageDecodeError("too_large", f"{full_w}x{full_h} resizes to {w}x{h} "
                                            f"for the model (extreme aspect ratio)")
    if preprocessing == "released":
        if image.shape[:2] != (full_h, full_w):
            raise ValueError("the released preprocessing takes the image at full size")
        return preprocess(image, input_size).numpy()
    if preprocessing != "fast":
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=False)[0].numpy()


def pixels_to_model(pixels, device=None):
    """A batch of :func:`model_input` arrays (``B x 3 x h x w`` uint8 or float32,
    numpy or torch) -> the normalised float32 model input on ``device``.

    uint8 pixels are copied as they are (from pinned memory, without blocking,
    on CUDA) and scaled and normalised on the device."""
    import torch

    x = torch.as_tensor(pixels)
    if device is not None and torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    elif device is not None:
        x = x.to(device)
    if x.dtype == torch.uint8:
        x = normalize(x.float().div_(255.0))
    return x


def decode_at_least(input_size: int):
    """The reduced-decode rule of :func:`depthlib.images.decode_image_reduced`: a JPEG
    is decoded at a DCT scale that keeps it at least twice the model's size (so the
    bicubic resize still downsamples by 2 or more, as from the full image)."""
    return lambda h, w: tuple(2 * s for s in target_size(h, w, input_size))


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


def model_stage_args(config, actor_kwargs: dict, actor_class=None) -> dict:
    """``map_batches`` arguments of the model stage, shared by the labelling and
    evaluation jobs (``config`` has the actor settings both configs share): the
    actor pool, its resources, and a batch of ``PASSES_PER_CALL`` model batches
    (Ray Data refuses GPU actors without a batch size)."""
    import ray

    gpus, cpus, threads = actor_resources(config.gpus_per_actor, config.cpus_per_actor)
    return dict(
        fn=actor_class or LabelActor,
        fn_constructor_kwargs=dict(batch_size=config.batch_size, num_threads=threads, dtype=config.dtype,
                                   **actor_kwargs),
        compute=ray.data.ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors,
                                           max_concurrent_calls_per_actor=ACTOR_CALLS_AT_ONCE),
        batch_size=config.batch_size * PASSES_PER_CALL, batch_format="numpy", zero_copy_batch=True,
        num_gpus=gpus, num_cpus=cpus)


class DecodePartition:
    """Read, decode and preprocess keys of a partition (CPU).

    The three steps are methods of their own (``read``, ``decode``, ``resize``)
    so the labelling benchmark times each on the same code."""

    def __init__(self, input_uri: str, input_size: int, max_pixels: int, group_rows: int = 16,
                 s3: storage.S3Config | None = None, preprocessing: str = "released", reduced_decode: bool = False):
        self.s3 = s3
        self.input_uri = input_uri
        self.input_size = input_size
        self.max_pixels = max_pixels
        self.group_rows = group_rows  # = the actor's batch size, so groups fill whole forward passes
        self.preprocessing = preprocessing
        self.no_pixels = np.zeros((3, 0, 0), np.uint8 if preprocessing == "fast" else np.float32)
        if reduced_decode and preprocessing != "fast":
            raise ValueError("a reduced decode needs the fast preprocessing")
        self.at_least = decode_at_least(input_size) if reduced_decode else None

    def read(self, key: str) -> bytes:
        uri = key if "://" in key or key.startswith("/") else storage.join(self.input_uri, key)
        return storage.read_bytes(uri)  # retries transient errors itself

    def decode(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """(pixels, the image's own (h, w) with EXIF applied); a large JPEG may decode reduced."""
        return decode_image_reduced(data, self.max_pixels, at_least=self.at_least)

    def resize(self, image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        return model_input(image, self.input_size, self.preprocessing, image_size)

    def _one(self, key: str) -> tuple[bytes, tuple[int, int], np.ndarray | None, str, str]:
        """(source bytes, decoded (h, w) with EXIF applied, model input or None, skip reason, detail)."""
        try:
            data = self.read(key)
        except Exception as e:  # a missing or unreadable object is a skip, not a crash
            return b"", (0, 0), None, "read_error", storage.redact(f"{type(e).__name__}: {e}")[:500]
        try:
            image, hw = self.decode(data)
            return data, hw, self.resize(image, hw), "", ""
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
                rows["pixels"].append(np.ascontiguousarray(pixels) if pixels is not None else self.no_pixels)
                rows["error"].append(error)
                rows["detail"].append(detail)
                count("bytes_read", len(data))
            yield from shape_groups(by_shape, self.group_rows)


class LabelActor:
    """The teacher: loaded once per actor, labels same-shape groups of a batch.

    Output rows carry the prediction as an ``in_h x in_w`` float32 array
    (``label``; empty for a skipped row) at the resolution the model saw (``in_h x in_w``, the resized input), not the
    source resolution; the pixels column is dropped. Encoding is left to the
    CPU writer tasks so the accelerator never waits for it.

    On CUDA the forward passes of a batch are queued one ahead: a pass is
    launched (its uint8 input copied from pinned memory without blocking and
    normalised on the device) before the previous pass's output is copied back
    and unpacked, so that host work overlaps the device's. ``forward`` queues a
    pass and ``finish`` waits for it; a stand-in accelerator
    (:mod:`depthlib.pseudo_label.stand_in`) replaces just these two.
    """

    def __init__(self, checkpoint: str, encoder: str, metric: bool = False, max_depth: float = 20.0,
                 dtype: str = "bf16", batch_size: int = 16, num_threads: int | None = None,
                 s3: storage.S3Config | None = None, compile: bool = False):
        import torch

        from depthlib.inference import default_device
        from depthlib.models import load_released

        storage.set_default_s3(s3)
        if num_threads is not None:
            torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.device = default_device()
        self.model = load_released(checkpoint, encoder, metric=metric, max_depth=max_depth).to(self.device).eval()
        if compile:
            # dynamic=None: the first shape compiles static, a second one compiles a shape-generic graph
            self.model = torch.compile(self.model, dynamic=None)
        self.dtype = dtype
        self.batch_size = batch_size

    def forward(self, pixels: np.ndarray):
        """Queue one pass over ``B x 3 x h x w`` model inputs (uint8 or normalised float32, see
        :func:`model_input`); returns a handle for :meth:`finish`."""
        import torch

        from depthlib.inference import autocast_for

        with torch.inference_mode(), autocast_for(self.device, self.dtype):
            return self.model(pixels_to_model(pixels, self.device))

    def finish(self, handle) -> np.ndarray:
        """The ``B x h x w`` float32 predictions of a queued pass (waits for it)."""
        return handle.float().cpu().numpy()

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """``B x 3 x h x w`` model inputs -> ``B x h x w`` float32 predictions."""
        return self.finish(self.forward(pixels))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        label = [NO_LABEL] * n
        error = batch["error"].copy()
        detail = batch["detail"].copy()

        def failed(part: list[int], reason: str) -> None:
            for i in part:
                error[i], detail[i] = "inference_error", reason[:500]
            count("skipped", len(part), reason="inference_error")

        def unpack(part: list[int], handle) -> None:
            try:
                preds = self.finish(handle)
            except Exception as e:  # an error of the device surfaces when its result is read
                failed(part, f"{type(e).__name__}: {e}")
                return
            for i, p in zip(part, preds):
                if np.isfinite(p).all():
                    label[i] = p
                else:
                    failed([i], "non-finite prediction")

        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(n):
            if not error[i]:
                groups.setdefault((int(batch["in_h"][i]), int(batch["in_w"][i])), []).append(i)
        queued = None  # (rows, handle) of the pass launched last, read back after the next one is queued
        for (h, w), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                try:
                    handle = self.forward(stack_pixels(_rows_of(batch["pixels"], part), h, w))
                except Exception as e:  # e.g. out of memory: record, keep the job alive
                    failed(part, f"{type(e).__name__}: {e}")
                    continue
                if queued is not None:
                    unpack(*queued)
                queued = (part, handle)
        if queued is not None:
            unpack(*queued)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(label=tensor_column(label), error=error, detail=detail)
        return out


NO_LABEL = np.zeros((0, 0), np.float32)  # the label of a skipped row


def _rows_of(column: np.ndarray, rows: list[int]):
    """Rows ``rows`` of a column: a slice (a view, no copy) of a fixed-shape tensor column when
    they are consecutive, else a list of the rows."""
    if column.dtype != object and rows == list(range(rows[0], rows[-1] + 1)):
        return column[rows[0]:rows[-1] + 1]
    return [column[i] for i in rows]


def stack_pixels(items: list | np.ndarray, h: int, w: int) -> np.ndarray:
    """``B x 3 x h x w`` from :func:`model_input` outputs, as arrays or as their bytes
    (uint8: ``3hw`` bytes, float32: ``12hw``); one batch holds one format. A ``B x 3 x h x w``
    uint8 or float32 array (a slice of a fixed-shape tensor column) comes back without a copy
    when it is contiguous."""
    if isinstance(items, np.ndarray) and items.dtype != object:
        if items.shape[1:] != (3, h, w) or items.dtype not in (np.uint8, np.float32):
            raise ValueError(f"pixels of {items.dtype} {items.shape[1:]} are not a 3 x {h} x {w} uint8 or "
                             "float32 input")
        return np.ascontiguousarray(items)
    first = items[0]
    dtype = first.dtype if isinstance(first, np.ndarray) else (np.uint8 if len(first) == 3 * h * w else np.float32)
    out = np.empty((len(items), 3, h, w), dtype)
    for j, item in enumerate(items):
        is_array = isinstance(item, np.ndarray)
        if (item.dtype != out.dtype or item.size != out[j].size) if is_array else len(item) != out[j].nbytes:
            got = f"{item.dtype} {item.shape}" if is_array else f"{len(item)} bytes"
            raise ValueError(f"pixels of {got} are not a 3 x {h} x {w} {out.dtype} input")
        out[j] = (item if is_array else np.frombuffer(item, dtype)).reshape(3, h, w)
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
                label = np.asarray(batch["label"][i], np.float32).reshape(h, w)
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

