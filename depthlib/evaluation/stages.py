"""The evaluation pipeline's stages, as plain callables (Ray Data wires them).

1. :class:`ReadInputs` (CPU tasks): one item = a few samples of one dataset ->
   rows with the model input (the released preprocessing, through the
   labelling job's ``model_input``), grouped by input shape; KITTI's image is
   cut to its 352 x 1216 benchmark crop first. With ``predictions`` set, the
   prediction is read from a ``.npy`` file instead and no model runs.
2. ``depthlib.pseudo_label.stages.LabelActor`` (GPU or CPU actors): the same
   actor the labelling job uses; it adds ``label`` (the ``in_h x in_w``
   float32 output) and passes every other column through.
3. :class:`ScoreRows` (CPU tasks): reads and decodes the ground truth, resizes
   the prediction to its size (bilinear, aligned corners: the released
   ``infer_image``), and scores it with ``depthlib.evaluation.protocol`` (or
   the DA-2K pairs); returns one small result row per sample with its
   metrics, a preview strip, and a small grid sample of its ground truth
   for the image-blind layout prior (``depthlib.evaluation.baselines``).

Every failure of one sample (a missing or damaged file, an undecodable
image, a ground truth without valid pixels, a bad annotation) becomes a
result row with ``error`` (a short reason) and ``detail`` (naming the file);
nothing raises, so one bad file never fails a block or another dataset.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterator

import numpy as np

from depthlib import storage
from depthlib.evaluation import pictures
from depthlib.evaluation.baselines import prior_grid
from depthlib.evaluation.datasets import GroundTruthError, decode_ground_truth, decode_npy
from depthlib.evaluation.protocol import Protocol, kitti_benchmark_crop, pairs_correct, score_and_depth, valid_pixels
from depthlib.evaluation.sources import FileReadError, Locator, read_locator
from depthlib.images import ImageDecodeError, decode_image
from depthlib.pseudo_label.stages import NO_LABEL, model_input, rows_to_batch, shape_groups

EVAL_INT_COLUMNS = ("image_h", "image_w", "in_h", "in_w")
NO_PIXELS = np.zeros((3, 0, 0), np.float32)  # the model input of a row without one (released preprocessing)
COLUMNS = ("dataset", "layout", "key", "sample", "image_h", "image_w", "crop", "thumb", "gt",
           "in_h", "in_w", "pixels", "label", "error", "detail")


def prediction_uri(predictions: str, dataset: str, key: str) -> str:
    """Where ``--predictions`` keeps a sample's map: ``<predictions>/<dataset>/<key>.npy``."""
    return storage.join(predictions, dataset, key + ".npy")


def pack_ground_truth(depth: np.ndarray, valid: np.ndarray) -> bytes:
    """``H x W`` float32 depth + bool mask -> bytes (for ground truth that travels with its row)."""
    h, w = depth.shape
    return (np.array([h, w], "<i4").tobytes() + np.asarray(depth, "<f4").tobytes()
            + np.packbits(np.asarray(valid, bool).ravel()).tobytes())


def unpack_ground_truth(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    h, w = np.frombuffer(data[:8], "<i4")
    depth = np.frombuffer(data, "<f4", count=h * w, offset=8).reshape(h, w)
    valid = np.unpackbits(np.frombuffer(data, np.uint8, offset=8 + 4 * h * w), count=h * w).reshape(h, w)
    return depth.astype(np.float32), valid.astype(bool)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class ReadInputs:
    """Read and decode each sample's image; make the model input (or read ``--predictions``)."""

    def __init__(self, input_size: int, max_pixels: int, group_rows: int, thumb_size: int = 192,
                 predictions: str | None = None, s3: storage.S3Config | None = None):
        self.input_size = input_size
        self.max_pixels = max_pixels
        self.group_rows = group_rows
        self.thumb_size = thumb_size
        self.predictions = predictions
        self.s3 = s3

    def _image(self, sample: dict) -> tuple[np.ndarray, str]:
        loc = Locator.from_dict(sample["files"]["image"])
        try:
            data = read_locator(loc)
            return decode_image(data, max_pixels=self.max_pixels), loc.describe()
        except FileReadError as e:
            raise _Skip(e.reason, str(e)) from None
        except ImageDecodeError as e:
            raise _Skip(e.reason, f"{loc.describe()}: {e.detail}") from None

    def _shard_rows(self, samples: list[dict]) -> dict[int, Any]:
        """The item's shard rows decoded with ``shards.decode_sample`` (one row group read)."""
        import pyarrow.parquet as pq

        from depthlib import shards

        ref = samples[0]["shard"]
        with storage.open_input(ref["uri"]) as f:
            pf = pq.ParquetFile(f)
            shards.check_shard_metadata(pf.metadata.metadata, ref["uri"])
            table = pf.read_row_group(ref["row_group"])
        wanted = {s["shard"]["row"] for s in samples}
        return {i: row for i, row in enumerate(table.to_pylist()) if i in wanted}

    def _one(self, dataset: str, layout: str, sample: dict, shard_rows: dict[int, Any] | None) -> dict:
        row = {c: b"" for c in ("thumb", "gt")}
        row.update(pixels=NO_PIXELS, label=NO_LABEL)
        row.update(dataset=dataset, layout=layout, key=sample["key"], sample=json.dumps(sample),
                   image_h=0, image_w=0, crop="", in_h=0, in_w=0, error="", detail="")
        if sample.get("error"):
            row.update(error=sample["error"], detail=sample.get("detail", ""))
            return row
        try:
            if layout == "shards":
                from depthlib import shards

                if shard_rows is None or sample["shard"]["row"] not in shard_rows:
                    raise _Skip("read_error", f"{storage.redact(sample['shard']['uri'])}: row {sample['key']} "
                                              f"not found")
                try:
                    decoded = shards.decode_sample(shard_rows[sample["shard"]["row"]])
                except (ImageDecodeError, ValueError) as e:
                    raise _Skip("bad_ground_truth" if not isinstance(e, ImageDecodeError) else e.reason,
                                f"{storage.redact(sample['shard']['uri'])} key {sample['key']}: {e}") from None
                if decoded.depth_type != "metric_depth":
                    raise _Skip("not_metric_depth", f"key {sample['key']}: depth_type {decoded.depth_type}")
                image = decoded.image
                row["gt"] = pack_ground_truth(decoded.depth, decoded.valid & (decoded.depth > 0))
            else:
                image, _ = self._image(sample)
            if layout == "kitti":
                full_h, full_w = image.shape[:2]
                try:
                    top, left, h, w = kitti_benchmark_crop(full_h, full_w)
                except ValueError as e:
                    raise _Skip("too_small", f"{sample['key']}: {e}") from None
                image = np.ascontiguousarray(image[top:top + h, left:left + w])
                row["crop"] = json.dumps([top, left, h, w, full_h, full_w])
            row["image_h"], row["image_w"] = image.shape[:2]
            row["thumb"] = pictures.png(pictures.thumbnail(image, self.thumb_size))
            if self.predictions:
                uri = prediction_uri(self.predictions, dataset, sample["key"])
                try:
                    pred = decode_npy(storage.read_bytes(uri), storage.redact(uri))
                except storage.ObjectNotFoundError:
                    raise _Skip("missing_prediction", f"missing prediction {storage.redact(uri)}") from None
                except GroundTruthError as e:
                    raise _Skip("bad_prediction", str(e)) from None
                pred = np.ascontiguousarray(pred, dtype=np.float32)
                row["label"] = pred
                row["in_h"], row["in_w"] = pred.shape
            else:
                try:
                    pixels = model_input(image, self.input_size)
                except ImageDecodeError as e:
                    raise _Skip(e.reason, f"{sample['key']}: {e.detail}") from None
                row["pixels"] = pixels
                row["in_h"], row["in_w"] = pixels.shape[1:]
        except _Skip as e:
            row.update(error=e.reason, detail=e.detail[:1000], pixels=NO_PIXELS, label=NO_LABEL, in_h=0, in_w=0)
        except Exception as e:  # noqa: BLE001 - a bug or an unforeseen file must not fail the block
            row.update(error="read_error", detail=storage.redact(f"{sample['key']}: {type(e).__name__}: {e}")[:1000],
                       pixels=NO_PIXELS, label=NO_LABEL, in_h=0, in_w=0)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        storage.set_default_s3(self.s3)
        for dataset, layout, samples_json in zip(batch["dataset"], batch["layout"], batch["samples"]):
            samples = json.loads(samples_json)
            shard_rows = None
            if layout == "shards" and any(not s.get("error") for s in samples):
                try:
                    shard_rows = self._shard_rows([s for s in samples if not s.get("error")])
                except Exception as e:  # noqa: BLE001 - every sample of the item gets the reason
                    detail = storage.redact(f"{type(e).__name__}: {e}")[:1000]
                    samples = [{**s, "error": "read_error", "detail": detail} for s in samples]
            by_shape: dict[tuple[int, int], dict[str, list]] = {}
            for sample in samples:
                row = self._one(str(dataset), str(layout), sample, shard_rows)
                rows = by_shape.setdefault((row["in_h"], row["in_w"]), {c: [] for c in COLUMNS})
                for c in COLUMNS:
                    rows[c].append(row[c])
            yield from shape_groups(by_shape, self.group_rows, EVAL_INT_COLUMNS)


class ScoreRows:
    """Score each predicted row against its ground truth (or DA-2K pairs).

    ``protocols``: dataset name -> ``Protocol.to_dict()``; ``metric``: the
    predictions are metres (DA-2K then orders by smaller = closer).
    Returns result rows ``{dataset, key, error, detail, result (JSON), preview (PNG)}``;
    ``result`` holds the metrics and ``n_valid`` (depth datasets) or
    ``n_pairs``, ``n_correct``, ``scene`` (DA-2K).
    """

    def __init__(self, protocols: dict[str, dict], metric: bool, s3: storage.S3Config | None = None):
        self.protocols = protocols
        self.metric = metric
        self.s3 = s3

    def _ground_truth(self, layout: str, sample: dict, row: dict) -> tuple[np.ndarray, np.ndarray]:
        if layout == "shards":
            return unpack_ground_truth(row["gt"])
        files, where = {}, {}
        for role in ("depth", "mask"):
            if role in sample["files"]:
                loc = Locator.from_dict(sample["files"][role])
                try:
                    files[role] = read_locator(loc)
                except FileReadError as e:
                    raise _Skip(e.reason, str(e)) from None
                where[role] = loc.describe()
        crop = json.loads(row["crop"]) if row["crop"] else None
        shape = (crop[4], crop[5]) if crop else (row["image_h"], row["image_w"])
        try:
            depth, valid = decode_ground_truth(layout, files, where, shape)
        except GroundTruthError as e:
            raise _Skip(e.reason, str(e)) from None
        if crop:
            top, left, h, w, full_h, full_w = crop
            if depth.shape != (full_h, full_w):
                raise _Skip("bad_ground_truth", f"{where['depth']}: ground truth {depth.shape[0]}x{depth.shape[1]} "
                                                f"!= image {full_h}x{full_w}; cannot apply the KITTI crop")
            depth, valid = depth[top:top + h, left:left + w], valid[top:top + h, left:left + w]
        return np.ascontiguousarray(depth), np.ascontiguousarray(valid)

    def _one(self, row: dict) -> tuple[dict, bytes, bytes]:
        import torch

        from depthlib.transforms import resize_prediction

        sample = json.loads(row["sample"])
        layout = row["layout"]
        pred = torch.from_numpy(np.array(row["label"], np.float32).reshape(row["in_h"], row["in_w"]))
        if not torch.isfinite(pred).all():
            raise _Skip("bad_prediction", f"{row['key']}: non-finite prediction")
        thumb = pictures.from_png(row["thumb"])
        if layout == "da2k":
            pred = resize_prediction(pred, (row["image_h"], row["image_w"])).numpy()
            pairs = sample["pairs"]
            try:
                right = [pairs_correct(pred, [p], self.metric, row["key"]) == 1 for p in pairs]
            except (ValueError, KeyError, TypeError) as e:
                raise _Skip("bad_annotation", f"annotations.json, image {row['key']}: {e}") from None
            result = {"n_pairs": len(pairs), "n_correct": int(sum(right)), "scene": sample["scene"]}
            return result, pictures.png(pictures.pairs_strip(thumb, pred, pairs, right, self.metric)), b""
        gt, mask = self._ground_truth(layout, sample, row)
        protocol = Protocol(**self.protocols[row["dataset"]])
        pred = resize_prediction(pred, gt.shape)
        gt_t, mask_t = torch.from_numpy(gt), torch.from_numpy(mask)
        try:
            valid = valid_pixels(gt_t, mask_t, protocol)
        except ValueError as e:  # a crop that does not fit this map
            raise _Skip("bad_ground_truth", f"{row['key']}: {e}") from None
        n_valid = int(valid.sum())
        if n_valid == 0:
            raise _Skip("no_valid_pixels", f"{row['key']}: no ground-truth pixel in ({protocol.min_depth}, "
                                           f"{protocol.max_depth}) m{' inside the ' + protocol.crop + ' crop' if protocol.crop else ''}")
        metrics, depth = score_and_depth(pred, gt_t, mask_t, protocol)
        metrics = {k: float(v) for k, v in metrics.items()}
        preview = pictures.png(pictures.depth_strip(thumb, depth.numpy(), gt, valid.numpy()))
        return {**metrics, "n_valid": n_valid}, preview, prior_grid(gt, valid.numpy())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        storage.set_default_s3(self.s3)
        out = {c: [] for c in ("dataset", "key", "error", "detail", "result", "preview", "layout")}
        for i in range(len(batch["key"])):
            row = {c: batch[c][i] for c in batch}
            for c in EVAL_INT_COLUMNS:
                row[c] = int(row[c])
            error, detail, result, preview, layout = str(row["error"]), str(row["detail"]), {}, b"", b""
            if not error:
                try:
                    result, preview, layout = self._one(row)
                except _Skip as e:
                    error, detail = e.reason, e.detail[:1000]
                except Exception as e:  # noqa: BLE001 - one sample's surprise must not fail the others
                    error, detail = "score_error", storage.redact(f"{row['key']}: {type(e).__name__}: {e}")[:1000]
            out["dataset"].append(str(row["dataset"]))
            out["key"].append(str(row["key"]))
            out["error"].append(error)
            out["detail"].append(detail)
            out["result"].append(json.dumps(result))
            out["preview"].append(preview)
            out["layout"].append(layout)
        return rows_to_batch(out, ())


def sample_rank(key: str) -> int:
    """A stable pseudo-random rank of a key: the picture grid shows the lowest ranks,
    so the same images appear in every run and for every checkpoint."""
    return zlib.crc32(key.encode())
