"""The decoding stage and its work items when the plan holds container entries.

:func:`container_items` cuts a wave's partitions into decoding tasks:

- loose objects, plain-tar members and Parquet rows: up to ``keys_per_task``
  keys of one partition per task, as for loose files (a plain-tar member is one
  ranged read, and neighbouring members of a task share one);
- members of a compressed tar: **one task per archive per wave**, holding all its
  pending keys across partitions. A gzip stream can only be read from its start,
  so tasks of 64 members each would decompress the archive's first part again
  and again (quadratic in its size); one task decompresses it once and yields
  its rows as it goes. The cost: decoding within one ``.tar.gz`` is one task, so
  parallelism comes from several archives (Open Images' 16 ``.tar.gz`` decode on
  16 cores); recompress to plain tars to spread one archive over many tasks.

:class:`DecodeContainers` is :class:`depthlib.pseudo_label.stages.DecodePartition`
reading through :func:`depthlib.archives.sources.read_entries`; its rows are the
same, so the labelling actor and writer are unchanged. Every entry gives exactly
one row (bytes that do not decode and containers that cannot be read become
rows with a skip reason), so the driver's commit of a partition, which waits
for all its keys, works as for loose files.

Why not ``ray.data.read_webdataset``: it reads a whole tar per read task (one
archive cannot be split into ranges of members, and resuming would re-read a
10 GB SA-1B tar for a few missing members), streams every member's bytes even
when it is filtered out, groups members into samples by the name before the
first dot and raises when one sample's members are not adjacent in the tar
(ray 2.60 ``_group_by_keys``), raises on a truncated member or archive (a failed
read task, not a recorded skip), and returns a nested tar (ImageNet-21K) as one
opaque blob. The members needed here are single images, so no grouping is needed
and none of this fits the job's partitions and exactly-once commits.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from depthlib import storage
from depthlib.archives.sources import read_entries
from depthlib.images import ImageDecodeError
from depthlib.pseudo_label.stages import DecodePartition, _empty_rows, shape_groups
from depthlib.pseudo_label.telemetry import count


def is_streamed(loc: str | None) -> bool:
    return bool(loc) and loc.startswith('["s"')


def container_items(partitions: list[tuple[int, list[str]]], locators: dict[str, str | None],
                    keys_per_task: int) -> list[dict]:
    """Decoding tasks ``{"pids", "keys", "locs"}`` (one list entry per key) for a wave."""
    streams: dict[str, dict] = {}
    items: list[dict] = []
    for pid, keys in partitions:
        run: dict = {"pids": [], "keys": [], "locs": []}
        for key in keys:
            loc = locators.get(key)
            if is_streamed(loc):
                item = streams.setdefault(json.loads(loc)[1], {"pids": [], "keys": [], "locs": []})
            else:
                item = run
            item["pids"].append(pid)
            item["keys"].append(key)
            item["locs"].append(loc or "")
            if len(run["keys"]) == keys_per_task:
                items.append(run)
                run = {"pids": [], "keys": [], "locs": []}
        if run["keys"]:
            items.append(run)
    return list(streams.values()) + items  # the long streamed tasks first


class DecodeContainers(DecodePartition):
    """Read (through containers), decode and preprocess the entries of one task.

    Rows of one partition leave together in same-shape groups, as in
    ``DecodePartition``; a long streamed task also hands on each group as soon
    as it is full, so its memory stays bounded."""

    def __init__(self, input_uri: str, input_size: int, max_pixels: int, group_rows: int = 16,
                 s3: storage.S3Config | None = None, preprocessing: str = "released", reduced_decode: bool = False,
                 image_column: str = "image"):
        super().__init__(input_uri, input_size, max_pixels, group_rows, s3, preprocessing, reduced_decode)
        self.image_column = image_column

    def _row(self, data: bytes | None, reason: str, detail: str):
        if reason:
            return data or b"", (0, 0), None, reason, detail[:500]
        try:
            image, hw = self.decode(data)
            return data, hw, self.resize(image, hw), "", ""
        except ImageDecodeError as e:
            return data, (0, 0), None, e.reason, e.detail[:500]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        storage.set_default_s3(self.s3)
        for pids, keys, locs in zip(batch["pids"], batch["keys"], batch["locs"]):
            pids, keys, locs = [int(p) for p in pids], [str(k) for k in keys], [str(x) for x in locs]
            by_shape: dict[tuple[int, int], dict[str, list]] = {}
            current = None
            for i, data, reason, detail in read_entries(self.input_uri, keys, locs, self.image_column, self.s3):
                if pids[i] != current and by_shape:
                    yield from shape_groups(by_shape, self.group_rows)
                    by_shape = {}
                current = pids[i]
                data, hw, pixels, error, detail = self._row(data, reason, detail)
                if error:
                    count("skipped", 1, reason=error)
                shape = pixels.shape[1:] if pixels is not None else (0, 0)
                rows = by_shape.setdefault(shape, _empty_rows())
                rows["pid"].append(pids[i])
                rows["key"].append(keys[i])
                rows["image"].append(data)
                rows["image_h"].append(hw[0])
                rows["image_w"].append(hw[1])
                rows["in_h"].append(shape[0])
                rows["in_w"].append(shape[1])
                rows["pixels"].append(np.ascontiguousarray(pixels) if pixels is not None else self.no_pixels)
                rows["error"].append(error)
                rows["detail"].append(detail)
                count("bytes_read", len(data))
                if len(rows["key"]) >= self.group_rows:
                    yield from shape_groups({shape: rows}, self.group_rows)
                    del by_shape[shape]
            if by_shape:
                yield from shape_groups(by_shape, self.group_rows)
