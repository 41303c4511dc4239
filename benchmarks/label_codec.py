"""Shard label encoding: bytes per label pixel, error and CPU cost, v2 against v1 and the alternatives.

    .venv/bin/python benchmarks/label_codec.py [--images 8] [--model-images 3] [--json out.json]

Inputs, all at the labelling job's resolution for a 4:3 photo (518 x 686; the
short side 518, sides multiples of 14). No real teacher weights can be
downloaded here, so the maps come from the project's own tools:

* ``rendered``: the exact disparity 1/depth of ``render_scene(seed, 518, 686,
  "photo")`` (sky and anything beyond 80 m = 0) -- a perfect teacher;
* ``rendered_bf16``: that map blurred (Gaussian, sigma 1 px: a network's soft
  edges) and rounded to bfloat16 -- what a perfect teacher running in bf16
  hands the writer (``run_batch`` returns ``out.float()`` of a bf16 output);
* ``rendered_noisy``: the blurred map plus i.i.d. Gaussian noise with the
  standard deviation of bf16 rounding (ulp / sqrt(12)) -- the same rounding
  error as uncorrelated noise, the hardest case;
* ``vits_fp32`` / ``vits_bf16``: ``build_model("vits")`` with random weights
  (seed 0) on the rendered photos, float32 and CPU bf16 autocast -- a real
  network output, but an untrained one (nearly flat maps);
* ``metric``: the rendered metric depth in metres (invalid = 0), as the
  synthetic job stores it (1e-4) and at the metric default (1e-3).

For each: bytes per label pixel of the ``depth`` column as stored in a
Parquet shard (v1 writer and v2 writer), the max error, alternatives on the
same maps (cell bytes), floor estimates, and encode/decode CPU time per label
against decoding the image's JPEG (``depthlib.images.decode_image``, quality
90) at the label size (also with grain, sigma 12 grey levels, added: rendered
photos compress to 0.1-0.3 bytes/pixel, real ones at quality 90 to 0.4-1,
and decode slower) and at twice the side (a typical source photo).
Times are the minimum over repeats on one thread; ratios are from this one
run. The version 1 encode time (``encode_depth`` plus the zstd Parquet then
spent on its 2 bytes per pixel) is printed for reference.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib import label_codec as lc  # noqa: E402
from depthlib import shards  # noqa: E402
from depthlib.images import decode_image  # noqa: E402
from depthlib.synthetic import encode_image, render_scene  # noqa: E402

H, W = 518, 686


# --------------------------------------------------------------------------- inputs

def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), returned as float32."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def bf16_ulp(x: np.ndarray) -> np.ndarray:
    """Spacing of bfloat16 numbers (8 significant bits) at |x|."""
    return np.exp2(np.floor(np.log2(np.maximum(np.abs(x), 1e-30))) - 7)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, r, mode="edge")
    y = sum(k[i] * p[i:i + x.shape[0], r:r + x.shape[1]] for i in range(2 * r + 1))
    p = np.pad(y, ((0, 0), (r, r)), mode="edge")
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(2 * r + 1))


def make_inputs(n: int, model_images: int) -> tuple[dict, list, dict]:
    """({kind: [maps]}, [rendered photos], {"rendered_noisy": [noise std per pixel]})."""
    maps: dict[str, list[np.ndarray]] = {k: [] for k in ("rendered", "rendered_bf16", "rendered_noisy", "metric")}
    photos, noise_std = [], []
    for seed in range(n):
        scene = render_scene(seed, H, W, "photo")
        photos.append(scene.image)
        depth = np.where(scene.valid, scene.depth, 0).astype(np.float32)
        disp = np.where(scene.valid, 1.0 / np.where(scene.valid, scene.depth, 1.0), 0.0)
        maps["metric"].append(depth)
        maps["rendered"].append(disp.astype(np.float32))
        smooth = gaussian_blur(disp, 1.0)
        maps["rendered_bf16"].append(bf16_round(smooth))
        std = bf16_ulp(smooth) / math.sqrt(12)
        noisy = smooth + np.random.default_rng(seed).normal(0, 1, smooth.shape) * std
        maps["rendered_noisy"].append(np.maximum(noisy, 0).astype(np.float32))
        noise_std.append(std)
    if model_images:
        import torch

        from depthlib.models import build_model
        from depthlib.transforms import preprocess

        torch.manual_seed(0)
        torch.set_num_threads(1)
        model = build_model("vits").eval()
        maps["vits_fp32"], maps["vits_bf16"] = [], []
        with torch.inference_mode():
            for image in photos[:model_images]:
                x = preprocess(image, 518)[None]
                maps["vits_fp32"].append(model(x)[0].float().numpy())
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    maps["vits_bf16"].append(model(x)[0].float().numpy())
    return maps, photos, {"rendered_noisy": noise_std}


# --------------------------------------------------------------------------- measures

def best_ms(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def stored_bpp(rows: list[dict], v1: bool = False) -> float:
    """Compressed bytes of the depth column in a Parquet shard, per label pixel."""
    table = shards.rows_to_table(rows)
    if v1:  # as the version 1 writer did: zstd over raw uint16 cells
        sink = pa.BufferOutputStream()
        pq.write_table(table.replace_schema_metadata({shards.VERSION_KEY: b"1"}), sink,
                       compression="zstd", row_group_size=shards.ROW_GROUP_ROWS)
        buf = sink.getvalue()
    else:
        buf = shards.table_to_parquet_bytes(table)
    md = pq.ParquetFile(pa.BufferReader(buf)).metadata
    col = table.column_names.index("depth")
    stored = sum(md.row_group(g).column(col).total_compressed_size for g in range(md.num_row_groups))
    return stored / sum(r["height"] * r["width"] for r in rows)


def rows_for(maps: list[np.ndarray], depth_type: str, tolerance: float | None = None) -> list[dict]:
    return [shards.make_row(f"k{i}", b"-", "jpeg", m, depth_type=depth_type, kind="pseudo",
                            image_size=m.shape, tolerance=tolerance) for i, m in enumerate(maps)]


def v1_rows(maps: list[np.ndarray], depth_type: str) -> list[dict]:
    rows = rows_for(maps, depth_type, 0.1)
    for row, m in zip(rows, maps):
        row["depth"], row["depth_lo"], row["depth_hi"] = shards.encode_depth(m)
    return rows


def max_error(decoded: np.ndarray, x: np.ndarray, depth_type: str) -> float:
    x = x.astype(np.float64)
    if depth_type == "disparity":
        return float(np.abs(decoded - x).max() / max(np.abs(x).max(), 1e-300))
    pos = x > 0
    return float(np.abs(decoded[pos] / x[pos] - 1).max())


def entropy_bits(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def discrete_gaussian_entropy(s: np.ndarray) -> np.ndarray:
    """Entropy (bits) of round(u + N(0, s^2)) for u uniform in [0, 1), per std ``s`` (in steps)."""
    grid = np.exp(np.linspace(math.log(0.01), math.log(1000), 161))
    erf = np.frompyfunc(math.erf, 1, 1)
    table = []
    for sg in grid:
        if sg > 4:  # the continuous approximation is exact to < 1e-3 bit here
            table.append(math.log2(sg * math.sqrt(2 * math.pi * math.e)))
            continue
        ks = np.arange(-int(8 * sg) - 3, int(8 * sg) + 4)[:, None]
        us = (np.arange(32) + 0.5)[None, :] / 32
        cdf = lambda t: 0.5 * (1 + erf(t / (sg * math.sqrt(2))).astype(np.float64))  # noqa: E731
        p = cdf(ks + 0.5 - us) - cdf(ks - 0.5 - us)
        p = np.where(p > 0, p, 1)
        table.append(float(-(p * np.log2(p)).sum(axis=0).mean()))
    return np.interp(np.log(np.clip(s, grid[0], grid[-1])), np.log(grid), table)


def noise_floor_bpp(maps: list[np.ndarray], stds: list[np.ndarray], tol: float = 1e-4) -> float:
    """Bytes/pixel of the quantised noise alone, given the clean map: no coder can store less on average."""
    bits = 0.0
    for m, std in zip(maps, stds):
        step = 2 * (tol - 2.0 ** -21) * float(np.abs(m).max())
        bits += float(discrete_gaussian_entropy(std / step).sum())
    return bits / 8 / sum(m.size for m in maps)


# --------------------------------------------------------------------------- alternatives

def _codes(m: np.ndarray, how: str, tol: float = 1e-4) -> np.ndarray:
    if how == "log16":  # version 1's codes
        return np.frombuffer(shards.encode_depth(m)[0], "<u2").reshape(m.shape).astype(np.int32)
    if how == "lin16":  # 65536 levels over [min, max]
        x = m.astype(np.float64)
        lo, hi = x.min(), x.max()
        return np.rint((x - lo) / max(hi - lo, 1e-300) * 65535).astype(np.int32)
    return lc._quantise_linear(lc._check_map(m), tol)[0]  # v2's grid


def _zstd(data, level: int = 1) -> int:
    return len(pa.Codec("zstd", compression_level=level).compress(data, asbytes=True))


def _cell(codes: np.ndarray, predictor: str | None, layout: str = "planes", codec: str = "zstd",
          level: int = 1) -> int:
    r = codes if predictor is None else lc._residuals(codes, predictor)
    if layout == "planes":
        data = lc._to_planes(r)[1]
    else:  # int16/uint16 little-endian, interleaved
        data = r.astype("<i2").tobytes()
    if codec == "zstd":
        return _zstd(data, level)
    return len(pa.Codec(codec, compression_level=level).compress(data, asbytes=True))


def _png16(codes: np.ndarray) -> int:
    buf = io.BytesIO()
    Image.fromarray(codes.astype(np.uint16)).save(buf, "PNG", compress_level=6)
    return len(buf.getvalue())


ALTERNATIVES = {
    "v1 codes (log uint16), zstd-1, no filter": lambda m: _cell(_codes(m, "log16"), None, "i16"),
    "linear uint16 (65536 levels), zstd-1": lambda m: _cell(_codes(m, "lin16"), None, "i16"),
    "linear uint16, grad filter + byte planes": lambda m: _cell(_codes(m, "lin16"), "grad"),
    "PNG-16 of linear uint16 (PIL, level 6)": lambda m: _png16(_codes(m, "lin16")),
    "tol grid, no filter, interleaved": lambda m: _cell(_codes(m, "tol"), None, "i16"),
    "tol grid, no filter, byte planes": lambda m: _cell(_codes(m, "tol"), None),
    "tol grid, left, byte planes": lambda m: _cell(_codes(m, "tol"), "left"),
    "tol grid, up, byte planes": lambda m: _cell(_codes(m, "tol"), "up"),
    "tol grid, grad, byte planes": lambda m: _cell(_codes(m, "tol"), "grad"),
    "tol grid, grad, interleaved int16": lambda m: _cell(_codes(m, "tol"), "grad", "i16"),
    "tol grid, chosen predictor, zstd-3": lambda m: _cell(_codes(m, "tol"), lc.choose_predictor(_codes(m, "tol")), level=3),
    "tol grid, chosen predictor, zstd-19": lambda m: _cell(_codes(m, "tol"), lc.choose_predictor(_codes(m, "tol")), level=19),
    "tol grid, chosen predictor, brotli-9": lambda m: _cell(_codes(m, "tol"), lc.choose_predictor(_codes(m, "tol")), codec="brotli", level=9),
    "PNG-16 of the tol grid (PIL, level 6)": lambda m: _png16(_codes(m, "tol")),
    "v2 at tol 1e-5 (10x finer)": lambda m: len(lc.encode_label(m, "disparity", 1e-5)),
    "v2 at tol 1e-3 (10x coarser)": lambda m: len(lc.encode_label(m, "disparity", 1e-3)),
}


# --------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--images", type=int, default=8, help="rendered scenes (seeds 0..N-1)")
    parser.add_argument("--model-images", type=int, default=3, help="of those, run through a random vits (0: skip)")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats (the minimum is kept)")
    parser.add_argument("--no-alternatives", action="store_true", help="skip the alternatives table")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    maps, photos, stds = make_inputs(args.images, args.model_images)
    print(f"inputs: {args.images} scenes at {H}x{W} ({time.perf_counter() - t0:.1f} s to make)\n")
    result: dict = {"size": [H, W], "images": args.images, "kinds": {}}

    # JPEG decode of the same image: at the label size, with sensor-like grain (rendered
    # photos are smoother than real ones, so their JPEGs decode faster), and at twice the side
    grain = np.random.default_rng(0)
    jpegs = {
        f"{H}x{W}": [encode_image(p, "jpeg", 90) for p in photos],
        f"{H}x{W}, grain": [encode_image(np.clip(p + grain.normal(0, 12, p.shape), 0, 255).astype(np.uint8),
                                         "jpeg", 90) for p in photos],
        f"{2 * H}x{2 * W}": [encode_image(np.asarray(Image.fromarray(p).resize((2 * W, 2 * H), Image.BICUBIC)),
                                          "jpeg", 90) for p in photos[:3]],
    }
    result["jpeg_decode_ms"] = {}
    print("JPEG decode (quality 90, depthlib.images.decode_image):")
    for name, js in jpegs.items():
        ms = float(np.mean([best_ms(lambda j=j: decode_image(j), args.repeats) for j in js]))
        bpp = sum(len(j) for j in js) / len(js) / (np.prod(list(map(int, name.split(",")[0].split("x")))))
        result["jpeg_decode_ms"][name] = ms
        print(f"  {name:20s} {ms:6.2f} ms  ({bpp:.2f} bytes/pixel)")
    jpeg_ms = result["jpeg_decode_ms"][f"{H}x{W}"]
    jpeg_grain_ms = result["jpeg_decode_ms"][f"{H}x{W}, grain"]
    jpeg_large_ms = result["jpeg_decode_ms"][f"{2 * H}x{2 * W}"]
    print()

    header = (f"{'input':16s} {'tol':>7s} {'v1 B/px':>8s} {'v2 B/px':>8s} {'v1/v2':>6s} {'max err':>9s} "
              f"{'enc ms':>7s} {'dec ms':>7s} {'enc/jpeg':>8s} {'dec/jpeg':>8s} {'enc/grain':>9s} {'enc/jpeg2x':>10s} "
              f"{'v1 enc ms':>9s}  predictors")
    print(header)
    print("-" * len(header))
    cases = [(k, "disparity", None) for k in maps if k != "metric"]
    cases += [("metric", "metric_depth", 1e-4), ("metric", "metric_depth", 1e-3)]
    for kind, depth_type, tol in cases:
        ms = maps[kind]
        rows = rows_for(ms, depth_type, tol)
        bpp_v2 = stored_bpp(rows)
        bpp_v1 = stored_bpp(v1_rows(ms, depth_type), v1=True)
        tol_used = lc.label_info(rows[0]["depth"]).tolerance
        err = max(max_error(shards.decode_row_depth(r), m, depth_type) for r, m in zip(rows, ms))
        enc = float(np.mean([best_ms(lambda m=m: lc.encode_label(m, depth_type, tol), args.repeats) for m in ms]))
        dec = float(np.mean([best_ms(lambda r=r: lc.decode_label(r["depth"]), args.repeats) for r in rows]))
        # version 1 for reference: encode_depth plus the zstd Parquet then spent on its 2 bytes/pixel
        enc_v1 = float(np.mean([best_ms(lambda m=m: _zstd(shards.encode_depth(m)[0]), args.repeats) for m in ms]))
        preds = [lc.label_info(r["depth"]).predictor for r in rows]
        counts = {p: preds.count(p) for p in lc.PREDICTORS if p in preds}
        label = f"{kind}" if depth_type == "disparity" else f"{kind} (m)"
        print(f"{label:16s} {tol_used:7.0e} {bpp_v1:8.3f} {bpp_v2:8.3f} {bpp_v1 / bpp_v2:6.1f} {err:9.3e} "
              f"{enc:7.2f} {dec:7.2f} {enc / jpeg_ms:8.2f} {dec / jpeg_ms:8.2f} {enc / jpeg_grain_ms:9.2f} "
              f"{enc / jpeg_large_ms:10.2f} "
              f"{enc_v1:9.2f}  {counts}")
        result["kinds"][f"{kind}@{tol_used:g}"] = {
            "depth_type": depth_type, "tolerance": tol_used, "v1_bytes_per_px": bpp_v1, "v2_bytes_per_px": bpp_v2,
            "max_error": err, "encode_ms": enc, "decode_ms": dec, "encode_over_jpeg": enc / jpeg_ms,
            "decode_over_jpeg": dec / jpeg_ms, "encode_over_jpeg_grain": enc / jpeg_grain_ms,
            "encode_over_jpeg_2x": enc / jpeg_large_ms,
            "v1_encode_ms": enc_v1, "predictors": counts}
    print("\n(max err: disparity |decoded - x| / max|x|; metric |decoded / x - 1|; enc/jpeg, dec/jpeg, "
          "enc/grain, enc/jpeg2x: over the JPEG decodes above)")

    # floors
    print("\nfloors (bytes/pixel):")
    for kind, ms in maps.items():
        if kind == "metric":
            continue
        ent = []
        for m in ms:
            codes = _codes(m, "tol")
            ent.append(entropy_bits(lc._residuals(codes, lc.choose_predictor(codes))) / 8)
        line = f"  {kind:16s} order-0 entropy of the chosen predictor's residuals {np.mean(ent):.3f}"
        if kind in stds:
            floor = noise_floor_bpp(ms, stds[kind])
            line += f"; entropy of the quantised bf16-level noise alone {floor:.3f}"
            result["kinds"][f"{kind}@0.0001"]["noise_floor_bytes_per_px"] = floor
        result["kinds"][f"{kind}@0.0001"]["order0_entropy_bytes_per_px"] = float(np.mean(ent))
        print(line)

    if not args.no_alternatives:
        print("\nalternatives, disparity (cell bytes per pixel, no Parquet; tol grid = v2's 1e-4 quantisation):")
        kinds = [k for k in maps if k != "metric"]
        print(f"  {'':44s}" + "".join(f"{k:>15s}" for k in kinds))
        result["alternatives"] = {}
        for name, fn in ALTERNATIVES.items():
            vals = []
            for k in kinds:
                vals.append(sum(fn(m) for m in maps[k]) / sum(m.size for m in maps[k]))
            result["alternatives"][name] = dict(zip(kinds, vals))
            print(f"  {name:44s}" + "".join(f"{v:15.3f}" for v in vals))
        png_ms = best_ms(lambda: _png16(_codes(maps["rendered_noisy"][0], "tol")), 3)
        enc_ms = best_ms(lambda: lc.encode_label(maps["rendered_noisy"][0], "disparity"), args.repeats)
        print(f"  (PNG-16 encode of one rendered_noisy map: {png_ms:.1f} ms; v2 encode {enc_ms:.2f} ms)")
        result["png16_encode_ms"], result["v2_encode_ms_same_map"] = png_ms, enc_ms

    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
