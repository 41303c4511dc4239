"""Training data on Ray Data: the shard index, the streamed training set, validation rows.

Layout of the stream (see ``depthlib.training.plan`` for the bookkeeping):

    ray.data.from_items(groups to read)      # one id per group, contiguous blocks
      .map_batches(load_groups)              # CPU tasks: read the group's row groups,
                                             # decode, augment -> fixed-size examples
      -> Ray Train streaming_split           # each worker: iter_torch_batches

Every example carries its ``group`` id and an ``ok`` flag. A row that does not
decode (bad image bytes, bad label) becomes a placeholder with no valid pixel
(``ok = 0``): it adds nothing to any loss, it is counted, and it is written
to ``<output>/data_errors/`` with its key and reason. So a corrupt row is
never fatal, and every group emits exactly its row count, which is what makes
resume exact.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from depthlib import shards, storage
from depthlib.images import ImageDecodeError
from depthlib.training import image_data
from depthlib.training.examples import ExampleSpec, apply_cutmix, make_example, placeholder_example
from depthlib.training.plan import DataPosition, GroupPlan, ShardIndex

INDEX_FILE = "data_index.json"
ERRORS_DIR = "data_errors"
MAX_BLOCKS = 4096  # Ray Data plans every block up front; beyond this, a block holds several groups
EXAMPLE_COLUMNS = ("image", "target", "mask", "region", "group", "ok")


# --------------------------------------------------------------------------- the index


def _shard_files(uri: str, missing_ok: bool = False) -> list[str]:
    if uri.endswith(".parquet"):
        return [uri]
    files = shards.list_shards(uri)
    if not files and not missing_ok:
        raise FileNotFoundError(f"no .parquet shards under {storage.redact(uri)} (images without labels "
                                f"are training data for --stage pretrain only)")
    return files


def _row_groups(uri: str) -> tuple[str, tuple[int, ...] | None, str]:
    """``(uri, rows per row group or None, reason it is unusable)``."""
    try:
        with storage.open_input(uri) as f:
            meta = pq.ParquetFile(f).metadata
        shards.check_shard_metadata(meta.metadata, uri)
        return uri, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)), ""
    except shards.ShardVersionError as e:
        return uri, None, f"not_a_shard: {e}"
    except Exception as e:  # unreadable footer: a damaged file, skipped and recorded
        return uri, None, storage.redact(f"unreadable: {type(e).__name__}: {e}")[:500]


def build_shard_index(data: list[str], threads: int = 16, *, image_output: str | None = None,
                      image_column: str = "image", log_fn=print) -> ShardIndex:
    """List the shards under each URI of ``data`` (``URI`` or ``URI:WEIGHT``)
    and read their footers (in parallel). Files that are not readable shards
    are recorded in ``skipped``; no readable row at all is an error. Each file
    records the source it was listed from; with weights, a file under two
    sources is an error (its share would be ambiguous).

    ``image_output``: the run directory of a stage that reads images only
    (pretraining). A source without any readable shard is then read as
    unlabeled images (:mod:`depthlib.training.image_data`), its plan frozen
    under that directory; without it, such a source is an error."""
    from depthlib.training.config import split_data_weight

    split = [split_data_weight(item) for item in data]
    source_of: dict[str, int] = {}
    for s, (uri, weight) in enumerate(split):
        for f in _shard_files(uri, missing_ok=image_output is not None):
            if f in source_of and source_of[f] != s and weight is not None:
                raise ValueError(f"{storage.redact(f)} is under two weighted --data sources "
                                 f"({storage.redact(split[source_of[f]][0])} and {storage.redact(uri)})")
            source_of.setdefault(f, s)
    files = sorted(source_of)
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        results = list(pool.map(_row_groups, files))
    with_shards = {source_of[u] for u, rg, _ in results if rg is not None}
    image_sources = [] if image_output is None else [s for s in range(len(split)) if s not in with_shards]
    # A source read as images indexes its Parquet files (image tables) itself: not skipped shards.
    results = [r for r in results if source_of[r[0]] not in image_sources]
    good = [(u, rg, source_of[u]) for u, rg, _ in results if rg is not None]
    for s in image_sources:
        item_files, item_rows = image_data.index_image_source(split[s][0], image_output, s, image_column)
        good += [(f, rg, s) for f, rg in zip(item_files, item_rows)]
        log_fn(f"[train] data: {storage.redact(split[s][0])} holds no shards: {sum(map(sum, item_rows))} "
               f"unlabeled images, read as the labelling job reads them")
    skipped = tuple({"file": storage.redact(u), "reason": why} for u, rg, why in results if rg is None)
    index = ShardIndex(tuple(u for u, _, _ in good), tuple(rg for _, rg, _ in good), skipped,
                       tuple(s for _, _, s in good))
    if index.n_rows == 0:
        raise ValueError(f"no readable rows in {storage.redact(data)}: "
                         f"{len(files)} files, skipped: {list(skipped)[:5]}")
    return index


def load_or_build_index(output: str, data: list[str], log_fn=print, *, images: bool = False,
                        image_column: str = "image") -> ShardIndex:
    """The run's frozen shard index (``<output>/data_index.json``), built on
    the first run. A resumed run reads the same files in the same plan even if
    more shards appeared under the prefixes since. ``images``: sources without
    shards are read as unlabeled images (see :func:`build_shard_index`)."""
    uri = storage.join(output, INDEX_FILE)
    if storage.exists(uri):
        saved = json.loads(storage.read_bytes(uri))
        if saved.get("data") != list(data):
            raise ValueError(f"{storage.redact(uri)} was made for --data {saved.get('data')}, "
                             f"not {list(data)}; use a new --output for other data")
        return ShardIndex.from_dict(saved)
    index = build_shard_index(data, image_output=output if images else None, image_column=image_column,
                              log_fn=log_fn)
    storage.write_bytes(uri, json.dumps({"data": list(data), **index.to_dict()}).encode())
    log_fn(f"[train] data: {len(index.files)} {'files' if images else 'shard files'}, {index.n_rows} rows"
           + (f"; {len(index.skipped)} files skipped (see {INDEX_FILE})" if index.skipped else ""))
    return index


# --------------------------------------------------------------------------- loading groups


def _read_item(uri: str, row_group: int) -> list[dict]:
    if image_data.is_image_item(uri):
        return storage.retry(lambda: image_data.read_image_item(uri, row_group), uri=uri[len(image_data.ITEM_PREFIX):])

    def read() -> list[dict]:
        with storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            shards.check_shard_metadata(pf.metadata.metadata, uri)
            return pf.read_row_group(row_group).to_pylist()

    return storage.retry(read, uri=uri)


def _decode(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sample = shards.decode_sample(row)
    if sample.depth.shape != sample.valid.shape:
        raise ValueError(f"label {sample.depth.shape} and mask {sample.valid.shape} differ")
    return sample.image, sample.depth, sample.valid


class _UnreadEntry(Exception):
    """An entry of an image source whose bytes could not be read (its reason and detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _reason(exc: Exception) -> str:
    if isinstance(exc, _UnreadEntry):
        return exc.reason
    if isinstance(exc, ImageDecodeError):
        return f"image_{exc.reason}"
    return "label_corrupt" if isinstance(exc, (ValueError, KeyError, TypeError)) else "row_error"


def _item_error_uri(errors_uri: str, file: str, row_group: int) -> str:
    digest = hashlib.sha1(file.encode()).hexdigest()[:16]
    return storage.join(errors_uri, f"{digest}-rg{row_group}.parquet")


def _write_errors(errors_uri: str, file: str, row_group: int, errors: list[dict]) -> None:
    """One small table per bad row group; the same name every epoch, so re-reads overwrite."""
    table = pa.table({"file": [storage.redact(file)] * len(errors), "row_group": [row_group] * len(errors),
                      "key": [e["key"] for e in errors], "reason": [e["reason"] for e in errors],
                      "detail": [e["detail"] for e in errors]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(_item_error_uri(errors_uri, file, row_group), buf.getvalue())


_PLAN_CACHE: dict[str, GroupPlan] = {}


def _plan(plan_ref) -> GroupPlan:
    import ray

    key = plan_ref.hex()
    if key not in _PLAN_CACHE:
        _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = ray.get(plan_ref)
    return _PLAN_CACHE[key]


def examples_of_group(plan: GroupPlan, group: int, spec: ExampleSpec, errors_uri: str | None) -> dict[str, np.ndarray]:
    """Every row of ``group`` as an example (placeholders for bad rows), in a
    shuffled order; all randomness from ``(seed, epoch, position)``."""
    epoch, pos = plan.locate(group)
    rng = np.random.default_rng([plan.seed, epoch, pos, 7])
    examples, ok = [], []
    for item in plan.group_items(group):
        file = plan.index.files[plan.file_of[item]]
        rg, n_rows = int(plan.row_group_of[item]), int(plan.rows_of[item])
        errors = []
        try:
            rows = _read_item(file, rg)
            if len(rows) != n_rows:
                raise ValueError(f"row group has {len(rows)} rows, the index says {n_rows}")
        except Exception as e:  # a whole row group unreadable: every row a placeholder
            rows = [None] * n_rows
            errors = [{"key": f"{storage.redact(file)}#rg{rg}/{i}", "reason": "row_group_unreadable",
                       "detail": storage.redact(f"{type(e).__name__}: {e}")[:500]} for i in range(n_rows)]
        for row in rows:
            if row is None:
                examples.append(placeholder_example(spec.crop))
                ok.append(False)
                continue
            try:
                if "error" in row:  # an image entry that could not be read
                    raise _UnreadEntry(*row["error"])
                decoded = image_data.decode_unlabeled(row, spec.crop) if "depth" not in row else _decode(row)
                examples.append(make_example(*decoded, spec, rng, depth_type=row.get("depth_type")))
                ok.append(True)
            except Exception as e:  # noqa: BLE001 - any bad row is recorded, never fatal
                errors.append({"key": str(row.get("key")), "reason": _reason(e),
                               "detail": storage.redact(str(e) if isinstance(e, _UnreadEntry)
                                                        else f"{type(e).__name__}: {e}")[:500]})
                examples.append(placeholder_example(spec.crop))
                ok.append(False)
        if errors and errors_uri:
            _write_errors(errors_uri, file, rg, errors)
    order = rng.permutation(len(examples))
    examples, ok = [examples[i] for i in order], [ok[i] for i in order]
    if spec.cutmix:
        apply_cutmix(examples, ok, rng)
    out = {k: np.stack([e[k] for e in examples]) for k in ("image", "target", "mask", "region")}
    out["mask"] = out["mask"].astype(np.uint8)
    out["group"] = np.full(len(examples), group, np.int64)
    out["ok"] = np.asarray(ok, np.uint8)
    return out


def load_groups(batch: dict[str, np.ndarray], *, plan_ref, spec: ExampleSpec, errors_uri: str | None,
                s3: storage.S3Config | None):
    """Ray Data UDF: group ids -> the examples of each group, one output batch per group."""
    storage.set_default_s3(s3)
    plan = _plan(plan_ref)
    for group in batch["group"]:
        yield examples_of_group(plan, int(group), spec, errors_uri)


def train_dataset(plan_ref, plan: GroupPlan, spec: ExampleSpec, start: DataPosition, end_group: int,
                  data_cpus: float, errors_uri: str | None, s3: storage.S3Config | None,
                  rank: int = 0, world: int = 1):
    """The training stream from ``start`` up to ``end_group`` (exclusive),
    skipping the groups ``start`` already finished.

    ``rank``/``world``: only the groups ``g`` with ``g % world == rank`` (one
    worker's own stream, ``--deterministic``); the default is every group, for
    Ray Train to split among the workers."""
    import ray

    from depthlib.ray_data_pacing import pace

    groups = [g for g in range(start.next_group, max(end_group, start.next_group + 1))
              if g % world == rank and not start.is_done(g)]
    n = len(groups)
    # Memory per task: the process (torch, pyarrow: ~0.5 GiB) plus a group's
    # examples and their decoded sources.
    bytes_per_row = spec.crop * spec.crop * (3 + 4 + 1 + 1) + 2 * 2**20
    rows = plan.items_per_group * int(plan.rows_of.max())
    # The ids are made here rather than by ray.data.range, whose read tasks each
    # ask for one whole CPU: on nodes where the training workers leave less than
    # that free, they would never be scheduled and the stream would wait forever.
    ds = pace(ray.data.from_items([{"group": g} for g in groups], override_num_blocks=max(1, min(n, MAX_BLOCKS))))
    return ds.map_batches(
        load_groups, batch_size=1, batch_format="numpy", num_cpus=data_cpus,
        memory=2**29 + rows * bytes_per_row,
        fn_kwargs=dict(plan_ref=plan_ref, spec=spec, errors_uri=errors_uri, s3=s3))


def count_data_errors(errors_uri: str) -> int:
    """Rows recorded as skipped under ``<output>/data_errors/`` (each bad row once)."""
    total = 0
    for obj in storage.list_objects(errors_uri, suffixes=(".parquet",)):
        with storage.open_input(obj.uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def depth_types_of_sources(index: ShardIndex) -> dict[int, set[str]]:
    """Per ``--data`` source, the ``depth_type`` values of its first shard file
    (one column read per source: a cheap check, not a census)."""
    out: dict[int, set[str]] = {}
    for i, file in enumerate(index.files):
        source = index.source_of_file(i)
        if source not in out:
            out[source] = set(shards.read_shard(file, columns=["depth_type"]).column("depth_type").to_pylist())
    return out


def median_depth(index: ShardIndex, min_depth: float, max_depth: float, rows: int = 64) -> float:
    """Median of the valid depths in ``(min_depth, max_depth)`` over about
    ``rows`` rows spread over the index's first row groups (metres)."""
    values = []
    for f, rg, _ in zip(*index.items()):
        for row in _read_item(index.files[int(f)], int(rg))[: max(1, rows // 8)]:
            if row.get("depth_type") != "metric_depth":
                continue
            try:
                _, depth, valid = _decode(row)
            except Exception:  # noqa: BLE001 - a bad row is skipped here as in training
                continue
            values.append(depth[valid & (depth > min_depth) & (depth < max_depth)])
        if sum(len(v) > 0 for v in values) >= rows:
            break
    values = np.concatenate(values) if values else np.zeros(0)
    if not len(values):
        raise ValueError(f"no valid depth in ({min_depth}, {max_depth}) m in the first training rows: "
                         f"is --max-depth right for this data, and does it hold metric depth?")
    return float(np.median(values))


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationRow:
    """One held-out image with metric depth, still encoded."""

    key: str
    row: dict

    def decode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(H x W x 3 uint8 image, H x W depth in metres, H x W bool valid)``; the
        image is resized to the depth map's size if they differ."""
        from depthlib.training.examples import _resize_image

        image, depth, valid = _decode(self.row)
        return _resize_image(image, depth.shape), depth, valid


def load_validation_rows(uri: str, limit: int) -> list[ValidationRow]:
    """The first ``limit`` rows (in file and row order) of the shards at ``uri``.

    Validation needs depth ground truth: shards with disparity labels are refused.
    """
    out: list[ValidationRow] = []
    for file in _shard_files(uri):
        table = shards.read_shard(file)
        for row in table.to_pylist():
            if row["depth_type"] != "metric_depth":
                raise ValueError(f"--val-data {storage.redact(file)}: row {row['key']!r} has a "
                                 f"{row['depth_type']} label; validation needs shards with metric depth")
            out.append(ValidationRow(str(row["key"]), row))
            if len(out) >= limit:
                return out
    if not out:
        raise ValueError(f"--val-data {storage.redact(uri)} has no rows")
    return out
