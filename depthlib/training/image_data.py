"""Unlabeled images as training data: what ``--stage pretrain`` reads when a
``--data`` source holds images rather than shards.

A source with no shard under it (a prefix of loose images, tar archives, tars
of tars, or Parquet files with an image column: whatever the labelling job
reads, ``depthlib.archives``) is listed once, on the run's first start, into
a frozen plan under ``<output>/image_plan/source-<S>/`` in the labelling
job's plan format (``depthlib.pseudo_label.plan``: keys in listing order,
each container entry with its locator), cut into partitions of
``ITEM_IMAGES`` images. Each partition is one item of the run's index, the
analogue of a shard's row group: its file is ``images+<plan chunk URI>`` and
its row group the partition's position in that chunk. Everything after the
index (groups, mixing weights, exact resume, recorded skips) is the shards'
own path in ``depthlib.training.data``.

A row of an image item is ``{"key", "image"}`` (the object's bytes, no
label), or ``{"key", "error": (reason, detail)}`` for an entry that could not
be read (a missing object, a corrupt archive member).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq

from depthlib import storage
from depthlib.archives.sources import plan_entries, read_entries
from depthlib.images import decode_image_reduced
from depthlib.pseudo_label.plan import chunk_uri, create_or_load_plan

ITEM_PREFIX = "images+"
PLAN_DIR = "image_plan"
ITEM_IMAGES = 32  # images per item: one decoding read, like a shard row group
PARTITIONS_PER_CHUNK = 512  # items per plan file (16384 keys)


def is_image_item(file: str) -> bool:
    """Whether an index entry names a partition of an image plan (not a shard file)."""
    return file.startswith(ITEM_PREFIX)


def plan_dir(output: str, source: int) -> str:
    return storage.join(output, PLAN_DIR, f"source-{source:03d}")


def index_image_source(input_uri: str, output: str, source: int,
                       image_column: str = "image") -> tuple[list[str], list[tuple[int, ...]]]:
    """Freeze (or load) the plan of the images under ``input_uri`` and return
    its items as ``(files, row_groups)`` entries for the run's ``ShardIndex``:
    one file per plan chunk, one row group per partition, its image count."""
    out = plan_dir(output, source)
    fingerprint = {"input": input_uri, "image_column": image_column, "item_images": ITEM_IMAGES}
    meta = create_or_load_plan(out, plan_entries(input_uri, image_column=image_column), fingerprint,
                               ITEM_IMAGES, PARTITIONS_PER_CHUNK)
    if meta.n_keys == 0:
        raise FileNotFoundError(f"no shards and no images under {storage.redact(input_uri)}")
    per_chunk = ITEM_IMAGES * PARTITIONS_PER_CHUNK
    files, row_groups = [], []
    for c in range(meta.n_chunks):
        n = min(per_chunk, meta.n_keys - c * per_chunk)
        sizes = [ITEM_IMAGES] * (n // ITEM_IMAGES) + ([n % ITEM_IMAGES] if n % ITEM_IMAGES else [])
        files.append(ITEM_PREFIX + chunk_uri(out, c))
        row_groups.append(tuple(sizes))
    return files, row_groups


_CHUNK_CACHE: dict[str, tuple[dict, list[tuple[list[str], list[str | None]]]]] = {}


def _chunk(item_file: str) -> tuple[dict, list[tuple[list[str], list[str | None]]]]:
    """``(fingerprint, [(keys, locators) per partition in plan order])`` of one
    plan chunk; the last one read is kept (a worker reads a chunk's items in turn)."""
    if item_file not in _CHUNK_CACHE:
        uri = item_file[len(ITEM_PREFIX):]
        plan_root = uri.rsplit("/_plan/", 1)[0]
        fingerprint = json.loads(storage.read_bytes(storage.join(plan_root, "_plan", "meta.json")))["fingerprint"]
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        locs = table.column("loc").to_pylist() if "loc" in table.column_names else [None] * table.num_rows
        parts: dict[int, tuple[list[str], list[str | None]]] = {}
        for pid, key, loc in zip(table.column("pid").to_pylist(), table.column("key").to_pylist(), locs):
            keys, ls = parts.setdefault(pid, ([], []))
            keys.append(key)
            ls.append(loc)
        _CHUNK_CACHE.clear()
        _CHUNK_CACHE[item_file] = (fingerprint, [parts[p] for p in sorted(parts)])
    return _CHUNK_CACHE[item_file]


def read_image_item(item_file: str, position: int) -> list[dict]:
    """The rows of one image item: every key of partition ``position`` of the
    chunk, in plan order, with its bytes or the reason it could not be read."""
    fingerprint, parts = _chunk(item_file)
    keys, locs = parts[position]
    rows: list[dict] = [{}] * len(keys)
    for i, data, reason, detail in read_entries(fingerprint["input"], keys, locs, fingerprint["image_column"]):
        rows[i] = {"key": keys[i], "image": data} if data is not None else {"key": keys[i], "error": (reason, detail)}
    return rows


def decode_unlabeled(row: dict, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, zero label, all-valid mask)`` of an image row, the label at the
    image's size. A JPEG decodes at the smallest DCT scale whose shorter side
    is still at least ``side`` (the crop's), which is all the example uses."""
    from depthlib.training.examples import shorter_side_size

    image, _ = decode_image_reduced(row["image"], at_least=lambda h, w: shorter_side_size(h, w, side))
    h, w = image.shape[:2]
    return image, np.zeros((h, w), np.float32), np.ones((h, w), bool)
