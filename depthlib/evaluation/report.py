"""Collecting per-image results into a report: JSON, Markdown, CSV and pictures.

:class:`DatasetResults` takes result rows as they stream in (bounded memory:
metrics per image, plus a fixed number of preview strips), and
:func:`write_report` writes, under the output URI::

    report.json                 checkpoint, encoder, input size, per dataset: metrics, protocol, errors,
                                and ``layout_prior`` (the image-blind baseline, depthlib.evaluation.baselines)
    report.md                   tables laid out like the paper's Table 2 and 3, with its figures
    config.json                 the resolved job settings
    <dataset>/per_image.csv     each image's metrics (DA-2K: pairs and accuracy per image)
    <dataset>/errors.csv        each skipped sample: key, reason, detail (naming the file)
    <dataset>/samples.png       image | prediction | ground truth | error, for a fixed set of images
    <dataset>/worst.png         the same for the worst images (largest AbsRel; DA-2K: lowest accuracy)
    da2k/by_scene.png           DA-2K accuracy by scene
"""

from __future__ import annotations

import csv
import heapq
import io
import json
from collections import defaultdict
from typing import Any, Optional

from depthlib import storage
from depthlib.evaluation import pictures
from depthlib.evaluation.baselines import PRIOR_GRID_SIDE, grid_prior_scores
from depthlib.evaluation.datasets import DatasetPlan
from depthlib.evaluation.protocol import Protocol
from depthlib.metrics import METRIC_NAMES

# Depth Anything V2 paper (arXiv 2406.09414), Table 2: zero-shot relative depth, (AbsRel, delta1).
PAPER_TABLE2 = {
    "vits": {"kitti": (0.078, 0.936), "nyu": (0.053, 0.973), "sintel": (0.500, 0.718),
             "eth3d": (0.142, 0.851), "diode": (0.073, 0.942)},
    "vitb": {"kitti": (0.078, 0.939), "nyu": (0.049, 0.976), "sintel": (0.495, 0.734),
             "eth3d": (0.137, 0.858), "diode": (0.068, 0.950)},
    "vitl": {"kitti": (0.074, 0.946), "nyu": (0.045, 0.979), "sintel": (0.487, 0.752),
             "eth3d": (0.131, 0.865), "diode": (0.066, 0.952)},
    "vitg": {"kitti": (0.075, 0.948), "nyu": (0.044, 0.979), "sintel": (0.506, 0.772),
             "eth3d": (0.132, 0.862), "diode": (0.065, 0.954)},
}
# Table 3: DA-2K accuracy (%).
PAPER_DA2K = {"vits": 95.3, "vitb": 97.0, "vitl": 97.1, "vitg": 97.4}
PAPER_DA2K_OTHERS = {"Depth Anything V1": 88.5, "Marigold": 86.8, "GeoWizard": 88.1, "DepthFM": 85.8}
# Our dataset name -> the paper's Table 2 column (DIODE: the paper's figure matches the indoor split, see notes).
PAPER_COLUMN = {"kitti": "kitti", "nyu": "nyu", "sintel": "sintel", "eth3d": "eth3d",
                "diode": "diode", "diode_indoor": "diode"}
TABLE_ORDER = ("kitti", "nyu", "sintel", "eth3d", "diode", "diode_indoor", "diode_outdoor", "scannet", "shards")
TITLES = {"kitti": "KITTI", "nyu": "NYU-D", "sintel": "Sintel", "eth3d": "ETH3D", "diode": "DIODE",
          "diode_indoor": "DIODE indoor", "diode_outdoor": "DIODE outdoor", "scannet": "ScanNet",
          "shards": "shards", "da2k": "DA-2K"}
DEPTH_COLUMNS = ("image", "prediction (aligned depth)", "ground truth", "error |p-g|/g, 0-0.3")


def _base(name: str) -> str:
    """The dataset of a report entry: ``shards`` for ``shards.photo`` (see ``datasets.dataset_spec``)."""
    return name.partition(".")[0]


def _title(name: str) -> str:
    base, _, label = name.partition(".")
    return TITLES.get(base, base) + (f" ({label})" if label else "")


class DatasetResults:
    """Per-image results of one dataset, as they arrive."""

    def __init__(self, plan: DatasetPlan, protocol: dict, n_pictures: int, n_worst: int):
        self.plan = plan
        self.protocol = protocol
        self.n_pictures = n_pictures
        self.n_worst = n_worst
        self.rows: list[dict] = []
        self.errors: list[dict] = []
        self._samples: list[tuple[int, str, bytes]] = []  # max-heap by rank (negated): lowest ranks kept
        self._worst: list[tuple[float, str, bytes]] = []  # min-heap by badness: the worst kept
        self._layout: list[bytes] = []  # grid samples of the scored ground truths, for the layout prior

    @property
    def is_da2k(self) -> bool:
        return self.plan.spec.layout == "da2k"

    def add(self, key: str, error: str, detail: str, result: dict, preview: bytes, rank: int,
            layout: bytes = b"") -> None:
        if error:
            self.errors.append({"key": key, "reason": error, "detail": detail})
            return
        self.rows.append({"key": key, **result})
        if layout:
            self._layout.append(layout)
        if not preview or not self.n_pictures:
            return
        item = (-rank, key, preview)
        if len(self._samples) < self.n_pictures:
            heapq.heappush(self._samples, item)
        elif item > self._samples[0]:
            heapq.heapreplace(self._samples, item)
        badness = (1 - result["n_correct"] / result["n_pairs"]) if self.is_da2k else result["abs_rel"]
        item = (badness, key, preview)
        if len(self._worst) < self.n_pictures:
            heapq.heappush(self._worst, item)
        elif item > self._worst[0]:
            heapq.heapreplace(self._worst, item)

    def sample_previews(self) -> list[tuple[str, bytes]]:
        return [(k, p) for _, k, p in sorted(self._samples, reverse=True)]

    def worst_previews(self) -> list[tuple[str, bytes]]:
        return [(k, p) for _, k, p in sorted(self._worst, reverse=True)]

    def summary(self) -> dict:
        """The dataset's entry of report.json."""
        out: dict[str, Any] = {}
        self.rows.sort(key=lambda r: r["key"])
        if self.is_da2k:
            pairs = sum(r["n_pairs"] for r in self.rows)
            correct = sum(r["n_correct"] for r in self.rows)
            by_scene_n: dict[str, int] = defaultdict(int)
            by_scene_c: dict[str, int] = defaultdict(int)
            for r in self.rows:
                by_scene_n[r["scene"]] += r["n_pairs"]
                by_scene_c[r["scene"]] += r["n_correct"]
            out.update(accuracy=correct / pairs if pairs else None, n_pairs=pairs, n_correct=correct,
                       n_images=len(self.rows),
                       by_scene={s: by_scene_c[s] / by_scene_n[s] for s in sorted(by_scene_n)},
                       pairs_by_scene={s: by_scene_n[s] for s in sorted(by_scene_n)})
            worst = sorted(self.rows, key=lambda r: (r["n_correct"] / r["n_pairs"], r["key"]))[:self.n_worst]
            out["worst"] = [{"key": r["key"], "accuracy": r["n_correct"] / r["n_pairs"], "n_pairs": r["n_pairs"]}
                            for r in worst]
        else:
            out["n_images"] = len(self.rows)
            for m in METRIC_NAMES:
                out[m] = sum(r[m] for r in self.rows) / len(self.rows) if self.rows else None
            worst = sorted(self.rows, key=lambda r: (-r["abs_rel"], r["key"]))[:self.n_worst]
            out["worst"] = [{"key": r["key"], "abs_rel": r["abs_rel"], "d1": r["d1"]} for r in worst]
            if self._layout:
                p = self.protocol
                prior = grid_prior_scores(self._layout, Protocol(p["min_depth"], p["max_depth"], p["alignment"]))
                out["layout_prior"] = {**prior, "grid_side": PRIOR_GRID_SIDE}
        out["protocol"] = self.protocol
        out["n_no_gt"] = self.plan.n_no_gt
        out["n_errors"] = len(self.errors)
        out["errors_by_reason"] = dict(sorted(_count(e["reason"] for e in self.errors).items()))
        out["errors"] = sorted(self.errors, key=lambda e: e["key"])
        return out

    def per_image_csv(self) -> bytes:
        if self.is_da2k:
            header = ["key", "scene", "n_pairs", "n_correct", "accuracy"]
            rows = [[r["key"], r["scene"], r["n_pairs"], r["n_correct"], f"{r['n_correct'] / r['n_pairs']:.6f}"]
                    for r in self.rows]
        else:
            header = ["key", "n_valid", *METRIC_NAMES]
            rows = [[r["key"], r["n_valid"], *(f"{r[m]:.6g}" for m in METRIC_NAMES)] for r in self.rows]
        return _csv(header, rows)

    def errors_csv(self) -> bytes:
        return _csv(["key", "reason", "detail"], [[e["key"], e["reason"], e["detail"]] for e in self.errors])


def _count(items) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return out


def _csv(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _f(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "–"
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("0.") else s


# --------------------------------------------------------------------------- markdown


def render_markdown(report: dict) -> str:
    """report.md: Table 2 / Table 3 layouts with the paper's figures for the same model size."""
    enc = report["encoder"]
    metric = report["metric"]
    datasets = report["datasets"]
    lines = [f"# Depth evaluation of `{report['checkpoint']}`", ""]
    lines.append(f"Encoder **{enc}**, input size {report['input_size']}, "
                 f"{'metric model (metres, no alignment)' if metric else 'relative model'}, "
                 f"dtype {report['dtype']}; {report['finished_at']}, depthlib {report['depthlib']}, "
                 f"{report['wall_s']:.0f} s.")
    lines.append("")
    depth_names = sorted((n for n in datasets if _base(n) in TABLE_ORDER and "error" not in datasets[n]),
                         key=lambda n: (TABLE_ORDER.index(_base(n)), n))
    failed = [n for n, d in datasets.items() if "error" in d]
    paper = PAPER_TABLE2.get(enc) if not metric else None
    if depth_names:
        lines += ["## Zero-shot depth (layout of the paper's Table 2)", ""]
        alignments = sorted({datasets[n]["protocol"]["alignment"] for n in depth_names})
        lines.append(f"AbsRel (lower is better) / δ1 (higher is better), mean over images; alignment: "
                     f"{', '.join(alignments)}. Protocol per dataset below.")
        lines.append("")
        head = ["Method"] + [f"{_title(n)} AbsRel ↓ / δ1 ↑" for n in depth_names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        ours = [f"**{_f(datasets[n]['abs_rel'])}** / **{_f(datasets[n]['d1'])}**" for n in depth_names]
        lines.append("| this checkpoint | " + " | ".join(ours) + " |")
        if any(datasets[n].get("layout_prior") for n in depth_names):
            cells = [f"{_f(lp['abs_rel'])} / {_f(lp['d1'])}" if (lp := datasets[n].get("layout_prior")) else "–"
                     for n in depth_names]
            lines.append("| layout prior (image-blind) | " + " | ".join(cells) + " |")
        if paper:
            cells = []
            for n in depth_names:
                col = PAPER_COLUMN.get(_base(n))
                cells.append(f"{_f(paper[col][0])} / {_f(paper[col][1])}" if col else "–")
            lines.append(f"| paper, Depth Anything V2-{enc[3:].upper()} | " + " | ".join(cells) + " |")
        lines.append("")
        notes = []
        if any(datasets[n].get("layout_prior") for n in depth_names):
            notes.append("Layout prior: one fixed map for every image of a dataset, the per-pixel median of its own "
                         "ground truth (" + ("depth, scored in metres unaligned" if metric else
                                             "disparity, aligned per image like the model") + "), on each map's "
                         f"grid sample (long side <= {PRIOR_GRID_SIDE} px, nearest). No model blind to the image "
                         "can do much better: a checkpoint that does not beat it has learned the scenes' layout "
                         "at most.")
        if paper and any(_base(n) in ("diode", "diode_indoor") for n in depth_names):
            notes.append("The paper's DIODE figure is printed beside `diode` and `diode_indoor`: it matches the "
                         "indoor split (about 0.072 AbsRel from released V2-L), while the full validation split "
                         "gives about 0.21 (Depth-Anything-V2 #280, a user's finding).")
        if paper and any(_base(n) == "sintel" for n in depth_names):
            notes.append("Sintel: the paper does not say which frames or pass; see the protocol below.")
        if metric:
            notes.append("The paper's Table 2 is for relative models; a metric model's figures are not comparable "
                         "to it and are not shown.")
        if enc not in PAPER_TABLE2 and not metric:
            notes.append(f"The paper has no figures for encoder {enc!r}.")
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for name in (n for n in datasets if _base(n) == "da2k"):
        d = datasets[name]
        if "error" in d or not d["n_pairs"]:
            continue
        lines += [f"## {_title(name)} (layout of the paper's Table 3)", ""]
        lines += ["| Method | Accuracy (%) |", "|---|---|"]
        lines.append(f"| this checkpoint | **{100 * d['accuracy']:.1f}** |")
        if enc in PAPER_DA2K:
            lines.append(f"| paper, Depth Anything V2-{enc[3:].upper()} | {PAPER_DA2K[enc]:.1f} |")
        for k, v in PAPER_DA2K_OTHERS.items():
            lines.append(f"| paper, {k} | {v:.1f} |")
        lines.append("")
        lines.append(f"{d['n_pairs']} pairs on {d['n_images']} images. By scene:")
        lines.append("")
        lines += ["| scene | pairs | accuracy (%) |", "|---|---|---|"]
        for s, acc in d["by_scene"].items():
            lines.append(f"| {s} | {d['pairs_by_scene'][s]} | {100 * acc:.1f} |")
        lines += ["", f"![DA-2K by scene]({name}/by_scene.png)", ""]
    if depth_names:
        lines += ["## All metrics", ""]
        head = ["dataset", "images", *METRIC_NAMES, "skipped"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for n in depth_names:
            d = datasets[n]
            lines.append(f"| {n} | {d['n_images']} | " + " | ".join(_f(d[m], 4) for m in METRIC_NAMES)
                         + f" | {d['n_errors']} |")
        lines.append("")
    lines += ["## Protocol", ""]
    common = ("inference", "input_size", "dtype")
    evaluated = [d for d in datasets.values() if "error" not in d]
    if evaluated:
        p = evaluated[0]["protocol"]
        lines.append("Inference: " + p["inference"] + (f"; input size {p['input_size']}, dtype {p['dtype']}"
                                                        if p.get("input_size") else "") + ".")
        lines.append("Per image: valid pixels = the dataset's mask and min_depth < gt < max_depth and the crop; "
                     "alignment fitted on them; metrics over them; each dataset's figure is the mean over images.")
        lines.append("")
    for n, d in datasets.items():
        if "error" in d:
            continue
        p = d["protocol"]
        lines.append(f"- **{n}**: " + "; ".join(f"{k}: {v}" for k, v in p.items()
                                                 if v not in (None, "") and k not in common))
    lines.append("")
    worst_lines = []
    for n, d in datasets.items():
        if "error" in d or not d.get("worst"):
            continue
        if _base(n) == "da2k":
            items = ", ".join(f"`{w['key']}` ({100 * w['accuracy']:.0f}% of {w['n_pairs']})" for w in d["worst"])
        else:
            items = ", ".join(f"`{w['key']}` (AbsRel {w['abs_rel']:.3f}, δ1 {w['d1']:.3f})" for w in d["worst"])
        worst_lines.append(f"- **{n}** ([samples]({n}/samples.png), [worst]({n}/worst.png)): {items}")
    if worst_lines:
        lines += ["## Worst images", ""] + worst_lines + [""]
    problems = []
    for n, d in datasets.items():
        if "error" in d:
            problems.append(f"- **{n}**: not evaluated: {d['error']}")
        elif d["n_errors"]:
            shown = d["errors"][:20]
            problems.append(f"- **{n}**: {d['n_errors']} sample(s) skipped ({n}/errors.csv): "
                            + "; ".join(f"`{e['key']}` {e['reason']}: {e['detail']}" for e in shown)
                            + (" ..." if d["n_errors"] > len(shown) else ""))
        if "error" not in d and d.get("n_no_gt"):
            problems.append(f"- **{n}**: {d['n_no_gt']} line(s) without ground truth skipped, not counted")
    if problems:
        lines += ["## Skipped", ""] + problems + [""]
    if failed:
        lines += [f"Datasets that failed: {', '.join(failed)}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def write_report(output: str, report: dict, results: dict[str, DatasetResults], config_json: str) -> list[str]:
    """Write every output file under ``output``; returns the URIs written."""
    written = []

    def put(rel: str, data: bytes) -> None:
        uri = storage.join(output, rel)
        storage.write_bytes(uri, data)
        written.append(uri)

    enc = report["encoder"]
    for name, res in results.items():
        put(f"{name}/per_image.csv", res.per_image_csv())
        put(f"{name}/errors.csv", res.errors_csv())
        columns = ("image", "prediction (green: right, red: wrong; dot: labelled closer)") if res.is_da2k \
            else DEPTH_COLUMNS
        for kind, previews in (("samples", res.sample_previews()), ("worst", res.worst_previews())):
            if previews:
                strips = [(k, pictures.from_png(p)) for k, p in previews]
                title = f"{_title(name)}: {'fixed sample' if kind == 'samples' else 'worst images'}"
                put(f"{name}/{kind}.png", pictures.grid_figure(strips, title, columns))
        if res.is_da2k and res.rows:
            d = report["datasets"][name]
            paper = PAPER_DA2K.get(enc) if not report["metric"] else None
            put(f"{name}/by_scene.png", pictures.scene_bar_chart(
                d["by_scene"], d["pairs_by_scene"], d["accuracy"], f"DA-2K accuracy by scene ({enc})", paper))
    put("report.json", json.dumps(report, indent=2).encode())
    put("report.md", render_markdown(report).encode())
    put("config.json", config_json.encode())
    return written
