"""The pipeline's summary: one table of every model on the held-out sets, read from the evaluation reports.

Written after every run as ``<storage>/report.json`` and ``report.md``::

    {"models": {"untrained" | "teacher" | "student_<enc>" | "metric":
                    {"synthetic": {"abs_rel", "d1", "pair_accuracy"}, "photo": {...}, "street": {...}}},
     "benchmarks": {model: {dataset: {"abs_rel", "d1"} or {"accuracy"}}},
     "metric_baseline": {"median_depth": m, "sets": {set: {"abs_rel", "d1"}}},
     "layout_prior": {"relative" | "metric": {set: {"abs_rel", "d1"}}},
     "metric_from": "student_<enc>", "stages": {stage: {"status", "seconds"[, "learning"]}}, "seconds": ..., "pictures": {...}}

AbsRel and delta1 of relative models are after the per-image least-squares
scale and shift in disparity (the zero-shot protocol); the metric model's are
in metres, unaligned, on the pixels within its training depth range.
``pair_accuracy`` is the share of DA-2K-style pairs (sampled on the held-out ground truth) ordered right.
The *layout prior* rows are the image-blind baseline of each held-out set
(``depthlib.evaluation.baselines``: the per-pixel median of its own ground
truth, one map for every image), scored like the relative models (disparity,
aligned) and like the metric model (metres, unaligned).
"""

from __future__ import annotations

import json

from depthlib import storage
from depthlib.pipeline.stages import HELDOUT_SETS, PAIRS_DATASET, Plan

SET_TITLES = {"synthetic": "synthetic-style held-out", "photo": "photo-style held-out (\"real\")",
              "street": "street held-out (one rig)"}


def model_table(plan: Plan) -> tuple[dict, dict, dict]:
    """``(models, benchmarks, protocol)`` from each model's ``evaluate/<model>/report.json``."""
    models, benchmarks = {}, {}
    protocol = {}
    for m in plan.models:
        report = json.loads(storage.read_bytes(storage.join(plan.root, "evaluate", m.name, "report.json")))
        ds = report["datasets"]
        by_scene = ds[PAIRS_DATASET]["by_scene"]
        models[m.name] = {s: {"abs_rel": ds[f"shards.{s}"]["abs_rel"], "d1": ds[f"shards.{s}"]["d1"],
                              "pair_accuracy": by_scene.get(s)} for s in HELDOUT_SETS}
        for s in HELDOUT_SETS:
            p = ds[f"shards.{s}"]["protocol"]
            protocol.setdefault(s, {"images": ds[f"shards.{s}"]["n_images"], "min_depth": p["min_depth"],
                                    "max_depth": p["max_depth"],
                                    "pairs": ds[PAIRS_DATASET]["pairs_by_scene"].get(s)})
        rest = {n: ({"accuracy": e["accuracy"], "n_pairs": e["n_pairs"]} if "accuracy" in e
                    else {"abs_rel": e["abs_rel"], "d1": e["d1"], "n_images": e["n_images"]})
                for n, e in ds.items() if not n.startswith("shards.") and n != PAIRS_DATASET}
        if rest:
            benchmarks[m.name] = rest
    return models, benchmarks, protocol


def layout_priors(plan: Plan) -> dict[str, dict]:
    """``{"relative": {set: {"abs_rel", "d1"}}, "metric": {...}}``: each held-out set's layout prior
    as the evaluation reports scored it, under the relative protocol (from the first relative
    model's report) and the metric one (the metric model's); a kind without a report is left out."""
    out: dict[str, dict] = {}
    for m in plan.models:
        kind = "metric" if m.metric else "relative"
        if kind in out:
            continue
        ds = json.loads(storage.read_bytes(storage.join(plan.root, "evaluate", m.name, "report.json")))["datasets"]
        sets = {s: {k: ds[f"shards.{s}"]["layout_prior"][k] for k in ("abs_rel", "d1")}
                for s in HELDOUT_SETS if ds.get(f"shards.{s}", {}).get("layout_prior")}
        if sets:
            out[kind] = sets
    return out


def metric_baseline(plan: Plan) -> dict:
    """What the metric row must beat: the median depth the metric fine-tune's head started at (the
    median of its first training rows, ``head_start_depth`` in ``metric/config.json``) predicted
    everywhere, scored like the metric model (metres, unaligned, its depth range) on each held-out set.

    Returns ``{"median_depth": m, "sets": {set: {"abs_rel", "d1"}}}``.
    """
    import numpy as np
    import torch

    from depthlib.evaluation.protocol import Protocol, score, valid_pixels
    from depthlib.training.data import load_validation_rows

    cfg = json.loads(storage.read_bytes(storage.join(plan.root, "metric", "config.json")))["config"]
    median = float(cfg["head_start_depth"])
    protocol = Protocol(cfg["min_depth"], cfg["max_depth"], "none")
    sets = {}
    for s in HELDOUT_SETS:
        scores = {"abs_rel": [], "d1": []}
        for row in load_validation_rows(storage.join(plan.root, "heldout", s, "shards"), 1 << 30):
            _, depth, valid = row.decode()
            gt, mask = torch.from_numpy(depth), torch.from_numpy(valid)
            if bool(valid_pixels(gt, mask, protocol).any()):
                m = score(torch.full_like(gt, median), gt, mask, protocol)
                for k in scores:
                    scores[k].append(float(m[k]))
        sets[s] = {k: float(np.mean(v)) if v else None for k, v in scores.items()}
    return {"median_depth": median, "sets": sets}


def pictures(plan: Plan) -> dict[str, str]:
    """Where a person would look: training curves and samples, labels, evaluation grids."""
    at = lambda *p: storage.join(plan.root, *p)  # noqa: E731
    out = {"pseudo_labels": at("pseudo_labels", "samples") + "/"}
    for s in plan.stages:
        if s.name in ("teacher", "metric") or s.name.startswith(("student_", "pretrain_")):
            out[f"{s.name} curves"] = at(s.name, "curves.png")
            out[f"{s.name} validation samples"] = at(s.name, "samples") + "/"
            if s.name.startswith("pretrain_"):
                out[f"{s.name} encoder"] = at(s.name, "encoder.pth")
    for m in plan.models:
        out[f"{m.name} evaluation"] = at("evaluate", m.name, "report.md")
        out[f"{m.name} photo-style samples"] = at("evaluate", m.name, "shards.photo", "samples.png")
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _baseline_label(baseline: dict) -> str:
    return f"constant {baseline['median_depth']:.2f} m"


LAYOUT_ROWS = {"relative": "layout prior", "metric": "layout prior (m)"}


def _with_baseline(models: dict, baseline: dict | None, layout: dict | None = None) -> dict:
    """The table's rows: the models, then the image-blind baselines (no pair accuracy) when given:
    the layout priors (relative, then metric) and the metric model's constant."""
    rows = dict(models)
    for kind, label in LAYOUT_ROWS.items():
        if (layout or {}).get(kind):
            rows[label] = {s: {**layout[kind].get(s, {"abs_rel": None, "d1": None}), "pair_accuracy": None}
                           for s in HELDOUT_SETS}
    if baseline:
        rows[_baseline_label(baseline)] = {s: {**v, "pair_accuracy": None} for s, v in baseline["sets"].items()}
    return rows


def _layout_note(layout: dict | None) -> str:
    if not layout:
        return ""
    return (" Layout prior: one fixed map for every image of a set, the per-pixel median of the set's own ground "
            "truth, scored like the relative models (disparity, aligned)"
            + ("; (m): the same in metres, scored like the metric model" if layout.get("metric") else "")
            + ". No model blind to the image can do much better.")


def format_table(models: dict, protocol: dict, metric_from: str | None = None, baseline: dict | None = None,
                 layout: dict | None = None) -> str:
    """A plain-text table: one row per model, AbsRel / delta1 / pair accuracy per held-out set, and
    the layout priors (:func:`layout_priors`) and the metric model's constant baseline
    (:func:`metric_baseline`) when given."""
    rows = _with_baseline(models, baseline, layout)
    name_w = max(len("model"), *(len(n) + len(" (metres)") for n in rows)) + 2
    group = 30
    lines = [(" " * name_w + "".join(f"{SET_TITLES.get(s, s):<{group}}" for s in HELDOUT_SETS)).rstrip(),
             (f"{'model':<{name_w}}" + "".join(f"{'AbsRel':>7}{'delta1':>8}{'pairs':>8}{'':{group - 23}}"
                                                for _ in HELDOUT_SETS)).rstrip()]
    for name, row in rows.items():
        label = name + (" (metres)" if name == "metric" else "")
        cells = "".join(f"{_num(row[s]['abs_rel']):>7}{_num(row[s]['d1']):>8}{_pct(row[s]['pair_accuracy']):>8}"
                        f"{'':{group - 23}}" for s in HELDOUT_SETS)
        lines.append(f"{label:<{name_w}}{cells}".rstrip())
    lines.append("AbsRel lower is better, delta1 and pairs (DA-2K-style pair accuracy) higher. Relative models: "
                 "per-image least-squares scale and shift in disparity; metric: metres, unaligned, within its "
                 "training depth range"
                 + (f" (fine-tuned from {metric_from})" if metric_from else "") + "."
                 + _layout_note(layout)
                 + (f" {_baseline_label(baseline)}: the metric training data's median depth everywhere, scored "
                    "like the metric model." if baseline else ""))
    notes = [f"{s}: {p['images']} images, depth {p['min_depth']:g}-{p['max_depth']:g} m, {p['pairs']} pairs"
             for s, p in protocol.items() if p]
    if notes:
        lines.append("; ".join(notes) + ".")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    lines = ["# Pipeline report", "",
             "| model | " + " | ".join(f"{s} AbsRel ↓ | {s} δ1 ↑ | {s} pairs ↑" for s in HELDOUT_SETS) + " |",
             "|---|" + "---|---|---|" * len(HELDOUT_SETS)]
    baseline = report.get("metric_baseline")
    rows = _with_baseline(report["models"], baseline, report.get("layout_prior"))
    for name, row in rows.items():
        cells = []
        for s in HELDOUT_SETS:
            r = row[s]
            cells += [_num(r["abs_rel"]), _num(r["d1"]),
                      "–" if r["pair_accuracy"] is None else f"{100 * r['pair_accuracy']:.1f}%"]
        lines.append(f"| {name}{' (m)' if name == 'metric' else ''} | " + " | ".join(cells) + " |")
    lines += ["", "Relative models: per-image least-squares scale and shift in disparity (zero-shot protocol); "
              f"the metric model (fine-tuned from {report['metric_from']}): metres, no alignment, within its "
              "training depth range"
              + (f"; {_baseline_label(baseline)}: the metric training data's median depth everywhere, scored like "
                 "the metric model" if baseline else "") + "."
              + _layout_note(report.get("layout_prior")) + " "
              "Pairs: DA-2K-style pair accuracy on pairs sampled on the held-out ground truth.", ""]
    for name, entries in report.get("benchmarks", {}).items():
        lines.append(f"- **{name}** benchmarks: " + ", ".join(
            f"{n} {100 * e['accuracy']:.1f}%" if "accuracy" in e else f"{n} AbsRel {e['abs_rel']:.3f} δ1 {e['d1']:.3f}"
            for n, e in entries.items()))
    lines += ["", "## Stages", "", "| stage | this run | seconds | learned |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['status']} | {s['seconds']:.0f} | {_learned_cell(s.get('learning'))} |"
              for n, s in report["stages"].items()]
    flagged = not_learning(report)
    if flagged:
        lines += ["", "**Stages that did not learn** (a flag, not a stop; see their curves.png): "
                  + "; ".join(f"{n}: {learning_note(v)}" for n, v in flagged.items())]
    lines += ["", "## Pictures and reports", ""]
    lines += [f"- {k}: `{v}`" for k, v in report["pictures"].items()]
    return "\n".join(lines) + "\n"


def learning_note(verdict: dict) -> str:
    return (f"{verdict['basis']} {verdict['start']:.3f} at the start, {verdict['last']:.3f} at the end "
            f"(improvement {verdict['improvement']}, margin {verdict['margin']})")


def _learned_cell(verdict: dict | None) -> str:
    if not verdict:
        return ""
    return ("yes" if verdict["learned"] else "**NO**") + f" ({verdict['basis']} {verdict['start']:.3f} → {verdict['last']:.3f})"


def not_learning(report: dict) -> dict[str, dict]:
    """Training stages whose run flagged itself as not learning (``run_state.json`` ``learning``)."""
    return {n: s["learning"] for n, s in report.get("stages", {}).items()
            if s.get("learning") and not s["learning"]["learned"]}


def write(root: str, report: dict) -> None:
    storage.write_bytes(storage.join(root, "report.json"), json.dumps(report, indent=2).encode())
    storage.write_bytes(storage.join(root, "report.md"), markdown(report).encode())
