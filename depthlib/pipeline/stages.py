"""The pipeline's stages: each builds the config of an existing job and calls it.

No stage logic lives here: rendering is ``depthlib.synthetic_job.make_synthetic``,
labelling ``depthlib.pseudo_label.run_pseudo_label``, training
``depthlib.training.job.run_training`` and evaluation
``depthlib.evaluation.job.run_evaluation``. This module decides what each
reads and writes under ``<storage>``, and each stage's settings fingerprint.

=======================  ==========================================  ==========================
stage                    what                                        outputs under <storage>/
=======================  ==========================================  ==========================
synthetic                procedural training scenes, exact depth     synthetic/shards/
metric_data              street scenes from one driving rig, exact   metric_data/shards/
                         depth (the metric fine-tune's data)
heldout                  held-out scenes (synthetic, photo and       heldout/synthetic/shards/,
                         street style, exact depth) and DA-2K-style  heldout/photo/shards/,
                         pairs sampled on their ground truth         heldout/street/shards/,
                                                                     heldout/da2k/
bucket                   photo-style JPEGs: the unlabeled bucket     bucket/images/
untrained                a randomly initialised model (baseline)     untrained/model.pth
pretrain_<encoder>       self-supervised encoder (masked-image       pretrain_<encoder>/encoder.pth
                         modelling) on the teacher's training
                         images, labels unread; with
                         --pretrain-steps, for each encoder that
                         --pretrained does not give
teacher                  teacher on the synthetic shards             teacher/model.pth, ...
pseudo_labels            the bucket labelled by the teacher          pseudo_labels/labels/
student_<encoder>        a student on the pseudo labels only         student_<encoder>/model.pth
metric                   metric fine-tune of a student               metric/model.pth
evaluate/<model>         each model on the held-out sets (+ any      evaluate/<model>/report.json
                         --benchmark)
=======================  ==========================================  ==========================

``synthetic`` is left out when ``--synthetic-data`` is given, ``metric_data``
when ``--metric-data`` is, ``bucket`` when ``--unlabeled`` is.

Every model is evaluated on every held-out set: relative models with the
zero-shot protocol in the teacher's validation depth range, the metric model
in metres, unaligned, in its own training range (``min_depth``-``max_depth``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from depthlib import storage
from depthlib.pipeline.config import PipelineConfig
from depthlib.pipeline.runner import Stage

# Held-out sets and their names in every evaluation report (scene names of the DA-2K-style pairs).
HELDOUT_SETS = ("synthetic", "photo", "street")
PAIRS_DATASET = "da2k.heldout"

# Training settings that do not change what a run produces (placement, logging, retries).
TRAIN_OPERATIONAL = frozenset({
    "gpus_per_worker", "cpus_per_worker", "data_cpus", "val_every", "samples", "checkpoint_every",
    "keep_checkpoints", "log_every", "max_failures", "tracker", "wandb_project", "preset", "fail_at_step"})
LABEL_OPERATIONAL = frozenset({"output", "batch_size", "min_actors", "max_actors", "gpus_per_actor",
                               "cpus_per_actor", "samples", "teacher_id"})
EVAL_OPERATIONAL = frozenset({"output", "batch_size", "min_actors", "max_actors", "gpus_per_actor",
                              "cpus_per_actor", "samples_per_task", "pictures", "worst"})


def data_seed(cfg: PipelineConfig, k: int) -> int:
    """Seed of rendered set ``k`` (0 training, 1 held-out, 2 held-out photo, 3 bucket): sets of one
    style never share a scene, and sets of different styles never do whatever their seeds (each
    style draws its scenes from its own random stream)."""
    return 4 * cfg.seed + k


def relative(value, root: str):
    """``value`` with the storage root replaced by ``<storage>`` in every string (fingerprints
    survive moving the directory or bucket prefix)."""
    if isinstance(value, str):  # a URI, or NAME=URI
        return re.sub(re.escape(root) + r"(?=/|$)", "<storage>", value)
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative(v, root) for v in value]
    return value


def _settings(config, drop: frozenset, root: str) -> dict:
    return relative({k: v for k, v in dataclasses.asdict(config).items() if k not in drop}, root)


@dataclass
class Model:
    """A model the pipeline evaluates: its stage, weights and how to load them."""

    name: str
    stage: str
    checkpoint: str
    encoder: str
    metric: bool = False
    max_depth: float = 20.0


@dataclass
class Plan:
    """Everything the pipeline will do, built from a config before anything runs."""

    root: str
    stages: list[Stage]
    models: list[Model]
    base_student: str  # the stage of the student the metric model is fine-tuned from


def _train_config(cfg: PipelineConfig, kind: str, preset: str, stage_name: str | None, root: str,
                  pretrained: dict[str, str] | None = None, **fields):
    """``PRESETS[preset]`` + the stage's fields + the encoder's pretrained weights + ``--train-set``;
    returns (stage name, TrainConfig). A student's stage name is ``student_<encoder>``; its output is
    that directory. ``pretrained``: encoder -> weights URI (default ``--pretrained``)."""
    from depthlib.training.config import PRESETS as TRAIN_PRESETS, TrainConfig

    if preset not in TRAIN_PRESETS:
        raise ValueError(f"--{kind}-preset{'s' if kind == 'student' else ''}: unknown training preset {preset!r}; "
                         f"choose from {', '.join(TRAIN_PRESETS)}")
    values = dict(TRAIN_PRESETS[preset])
    recipe = values.pop("stage", kind)
    if recipe != kind and kind != "pretrain":  # pretraining takes any recipe's size, crop and schedule
        raise ValueError(f"--{kind}-preset {preset!r} is a {recipe} recipe, not a {kind} one")
    overrides = cfg.train_overrides()
    values.update(overrides.get(kind, {}))
    forced = fields.pop("encoder", None)  # the metric model has its student's encoder
    encoder = forced or values.get("encoder", TrainConfig.__dataclass_fields__["encoder"].default)
    name = stage_name or f"student_{encoder}"
    if name != kind:
        values.update(overrides.get(name, {}))
    for stage in (kind, name):
        asked = overrides.get(stage, {}).get("encoder", encoder)
        if asked != encoder:
            raise ValueError(f"--train-set {stage}.encoder={asked}: the {name} stage's encoder is {encoder}")
    values.update(fields, stage=kind, encoder=encoder, preset=preset, output=storage.join(root, name))
    pretrained = cfg.pretrained_by_encoder() if pretrained is None else pretrained
    if kind in ("teacher", "student") and encoder in pretrained and not values.get("pretrained_encoder"):
        values["pretrained_encoder"] = pretrained[encoder]
    return name, TrainConfig(**values)


def build_plan(cfg: PipelineConfig) -> Plan:
    """The stage list for ``cfg`` (storage made absolute), with every job's config built and checked."""
    from depthlib.evaluation.config import EvaluateConfig
    from depthlib.pseudo_label.config import PseudoLabelConfig
    from depthlib.synthetic_job import MakeSyntheticConfig

    root = cfg.storage.rstrip("/") if storage.is_s3(cfg.storage) else storage.local_path(cfg.storage)
    at = lambda *parts: storage.join(root, *parts)  # noqa: E731
    stages: list[Stage] = []

    # ---- data
    def rendered(name: str, describe: str, **job_fields) -> str:
        """Add stage ``name`` rendering ``MakeSyntheticConfig(**job_fields)`` into ``<storage>/<name>``;
        returns the URI of what it writes (its shards or images)."""
        job = MakeSyntheticConfig(output=at(name), scenes_per_task=cfg.scenes_per_task, **job_fields)
        stages.append(Stage(name, job.fingerprint(), _render(job), ("summary.json",), describe=describe))
        return at(name, job.format)

    if cfg.synthetic_data:
        train_data, synthetic_needs = list(cfg.synthetic_data), ()
    else:
        train_data = [rendered("synthetic", f"{cfg.synthetic_count} synthetic scenes at {cfg.synthetic_size}",
                               count=cfg.synthetic_count, size=cfg.synthetic_size, seed=data_seed(cfg, 0),
                               style="synthetic", format="shards")]
        synthetic_needs = ("synthetic",)

    if cfg.metric_data:
        metric_data, metric_needs = list(cfg.metric_data), ()
    else:
        metric_data = [rendered("metric_data", f"{cfg.metric_count} street scenes (one driving rig) at "
                                f"{cfg.metric_size} for the metric model", count=cfg.metric_count,
                                size=cfg.metric_size, seed=data_seed(cfg, 0), style="street", format="shards")]
        metric_needs = ("metric_data",)

    sets = {
        style: MakeSyntheticConfig(output=at("heldout", style), count=cfg.heldout_count,
                                   size=cfg.heldout_size if style == "synthetic" else cfg.heldout_photo_size,
                                   seed=data_seed(cfg, 2 if style == "photo" else 1), style=style, format="shards",
                                   scenes_per_task=cfg.scenes_per_task)
        for style in HELDOUT_SETS}
    heldout = {style: storage.join(job.output, "shards") for style, job in sets.items()}
    pairs = at("heldout", "da2k")
    pair_settings = {"per_image": cfg.pairs_per_image, "min_ratio": cfg.pair_min_ratio, "seed": cfg.seed}
    stages.append(Stage(
        "heldout", {**{s: j.fingerprint() for s, j in sets.items()}, "pairs": pair_settings},
        _heldout(sets, heldout, pairs, pair_settings),
        tuple(f"{s}/summary.json" for s in sets) + ("da2k/annotations.json",),
        describe=f"{cfg.heldout_count} held-out scenes per style with exact depth, DA-2K-style pairs"))

    if cfg.unlabeled:
        bucket, bucket_needs = cfg.unlabeled, ()
    else:
        bucket = rendered("bucket", f"{cfg.bucket_count} photo-style JPEGs as the unlabeled bucket",
                          count=cfg.bucket_count, size=cfg.bucket_size, seed=data_seed(cfg, 3), style="photo",
                          format="images")
        bucket_needs = ("bucket",)

    # ---- pretraining, teacher, labels, students, metric
    pretrained = cfg.pretrained_by_encoder()
    pretrains: list[tuple[str, object]] = []
    if cfg.pretrain_data:
        pretrain_data, pretrain_needs = list(cfg.pretrain_data), ()
    else:
        pretrain_data, pretrain_needs = {"synthetic": (train_data, synthetic_needs), "bucket": ([bucket], bucket_needs),
                                         "both": (train_data + [bucket], synthetic_needs + bucket_needs)}[cfg.pretrain_on]
    if cfg.pretrain_steps:
        from depthlib.training.config import PRESETS as TRAIN_PRESETS, TrainConfig

        default_encoder = TrainConfig.__dataclass_fields__["encoder"].default
        encoders = [TRAIN_PRESETS.get(p, {}).get("encoder", default_encoder)
                    for p in [cfg.teacher_preset, *cfg.student_presets]]
        for encoder in dict.fromkeys(encoders):
            if encoder in pretrained:
                continue
            name, tc = _train_config(cfg, "pretrain", cfg.pretrain_preset or cfg.teacher_preset, f"pretrain_{encoder}",
                                     root, encoder=encoder, data=pretrain_data,
                                     val_data=heldout["photo"], workers=cfg.pretrain_workers,
                                     steps=cfg.pretrain_steps)
            pretrains.append((name, tc))
            pretrained[encoder] = storage.join(tc.output, "encoder.pth")
    pretrain_of = {tc.encoder: name for name, tc in pretrains}
    _, teacher = _train_config(cfg, "teacher", cfg.teacher_preset, "teacher", root, pretrained, data=train_data,
                               val_data=heldout["synthetic"], workers=cfg.teacher_workers,
                               **({"steps": cfg.teacher_steps} if cfg.teacher_steps else {}))
    input_size = cfg.input_size or teacher.crop
    zero_shot = (teacher.val_min_depth, teacher.val_max_depth)  # the range training's validation uses

    students: list[tuple[str, object]] = []
    labels = at("pseudo_labels", "labels")
    for preset in cfg.student_presets:
        name, student = _train_config(cfg, "student", preset, None, root, pretrained, data=[labels],
                                      val_data=heldout["photo"],
                                      workers=cfg.student_workers,
                                      **({"steps": cfg.student_steps} if cfg.student_steps else {}))
        if any(name == n for n, _ in students):
            raise ValueError(f"--student-presets: two students with encoder {student.encoder}")
        students.append((name, student))
    unknown = [s for s in cfg.train_overrides() if s.startswith("student_") and s not in dict(students)]
    if unknown:
        raise ValueError(f"--train-set names {unknown}, not a student of this pipeline "
                         f"({', '.join(n for n, _ in students)})")
    base_name, base = students[0]
    if cfg.metric_from:
        chosen = [(n, s) for n, s in students if s.encoder == cfg.metric_from]
        if not chosen:
            raise ValueError(f"--metric-from {cfg.metric_from}: no student with that encoder "
                             f"({', '.join(s.encoder for _, s in students)})")
        base_name, base = chosen[0]
    _, metric = _train_config(cfg, "metric", cfg.metric_preset, "metric", root, encoder=base.encoder,
                              data=metric_data, val_data=heldout["street"],
                              workers=cfg.metric_workers,
                              init_from=storage.join(base.output, "model.pth"),
                              **({"steps": cfg.metric_steps} if cfg.metric_steps else {}),
                              **({"max_depth": cfg.metric_max_depth} if cfg.metric_max_depth else {}))

    stages.append(Stage("untrained", {"encoder": base.encoder, "seed": cfg.seed},
                        _untrained(base.encoder, cfg.seed, at("untrained", "model.pth")), ("model.pth",),
                        describe=f"a randomly initialised {base.encoder} (the baseline)"))
    for name, tc in pretrains:
        stages.append(_train_stage(name, tc, root, pretrain_needs + ("heldout",)))
    own_pretrain = lambda encoder: (pretrain_of[encoder],) if encoder in pretrain_of else ()  # noqa: E731
    stages.append(_train_stage("teacher", teacher, root, synthetic_needs + ("heldout",) + own_pretrain(teacher.encoder)))
    label = PseudoLabelConfig(input=bucket, output=at("pseudo_labels"), checkpoint=storage.join(teacher.output,
                              "model.pth"), encoder=teacher.encoder, input_size=input_size,
                              batch_size=cfg.label_batch_size, min_actors=cfg.label_actors,
                              max_actors=cfg.label_actors, partition_size=cfg.label_partition_size,
                              dtype=cfg.label_dtype, teacher_id="teacher/model.pth")
    stages.append(Stage("pseudo_labels", _settings(label, LABEL_OPERATIONAL, root), _label(label),
                        ("summary.json",), ("teacher",) + bucket_needs,
                        describe=f"the bucket labelled by the teacher at {input_size} px"))
    for name, student in students:
        stages.append(_train_stage(name, student, root, ("pseudo_labels", "heldout") + own_pretrain(student.encoder)))
    stages.append(_train_stage("metric", metric, root, (base_name, "heldout") + metric_needs))

    # ---- evaluation of every model on the held-out sets (+ benchmarks)
    models = [Model("untrained", "untrained", at("untrained", "model.pth"), base.encoder),
              Model("teacher", "teacher", storage.join(teacher.output, "model.pth"), teacher.encoder)]
    models += [Model(n, n, storage.join(s.output, "model.pth"), s.encoder) for n, s in students]
    models.append(Model("metric", "metric", storage.join(metric.output, "model.pth"), metric.encoder, metric=True,
                        max_depth=metric.max_depth))
    ours = {f"shards.{s}": heldout[s] for s in HELDOUT_SETS}
    ours[PAIRS_DATASET] = pairs
    extra = [b.partition("=")[0] for b in cfg.benchmark]
    clash = sorted(set(extra) & set(ours))
    if clash:
        raise ValueError(f"--benchmark {clash}: these names are the pipeline's own held-out sets; use another label "
                         f"(e.g. shards.mine=URI)")
    for m in models:
        low, high = (metric.min_depth, metric.max_depth) if m.metric else zero_shot
        ev = EvaluateConfig(checkpoint=m.checkpoint, encoder=m.encoder, metric=m.metric, max_depth=m.max_depth,
                            dataset=[f"{k}={v}" for k, v in ours.items()] + list(cfg.benchmark),
                            split=list(cfg.benchmark_split), output=at("evaluate", m.name),
                            depth_range=[f"shards.{s}={low:g},{high:g}" for s in HELDOUT_SETS],
                            input_size=input_size, batch_size=cfg.eval_batch_size, min_actors=cfg.eval_actors,
                            max_actors=cfg.eval_actors)
        stages.append(Stage(f"evaluate/{m.name}", _settings(ev, EVAL_OPERATIONAL, root), _evaluate(m.name, ev),
                            ("report.json",), (m.stage, "heldout"),
                            describe=f"{m.name} on the held-out sets" + (" and benchmarks" if cfg.benchmark else "")))
    return Plan(root, stages, models, base_name)


# --------------------------------------------------------------------------- stage bodies


def _train_stage(name: str, tc, root: str, needs: tuple[str, ...]) -> Stage:
    def run(log):
        from depthlib.training.job import run_training

        log(f"[pipeline] {name}: progress in {storage.redact(storage.join(tc.output, 'metrics.jsonl'))} "
            f"(a row every {tc.log_every} steps), pictures in {storage.redact(storage.join(tc.output, 'samples'))}/")
        summary = run_training(dataclasses.replace(tc), log=log)
        if summary.get("finished_step", 0) < tc.steps:
            raise RuntimeError(f"training stage {name} ended at step {summary.get('finished_step')} of {tc.steps}")
        return {k: summary.get(k) for k in ("finished_step", "final", "best_val_abs_rel", "wall_s",
                                            "data_rows_skipped", "learning")}

    what = {"teacher": "teacher on synthetic depth", "metric": "metric fine-tune"}.get(
        name, "self-supervised encoder" if name.startswith("pretrain_") else "student on pseudo labels")
    return Stage(name, _settings(tc, TRAIN_OPERATIONAL, root), run, ("model.pth", "run_state.json"), needs,
                 describe=f"{what}: {tc.encoder}, {tc.steps} steps, {tc.workers} workers")


def _render(job):
    def run(log):
        from depthlib.synthetic_job import make_synthetic

        summary = make_synthetic(job)
        return {k: summary[k] for k in ("count", "scenes_rendered", "tasks_skipped", "seconds")}
    return run


def _heldout(sets: dict, heldout: dict[str, str], pairs: str, pair_settings: dict):
    def run(log):
        from depthlib.pipeline.heldout import write_pairs
        from depthlib.synthetic_job import make_synthetic

        out = {}
        for style, job in sets.items():
            s = make_synthetic(job)
            out[style] = {k: s[k] for k in ("count", "size", "seconds")}
        out["pairs"] = write_pairs(heldout, pairs, pair_settings["per_image"], pair_settings["min_ratio"],
                                   pair_settings["seed"])
        log(f"[pipeline] DA-2K-style pairs: {out['pairs']}")
        return out
    return run


def _untrained(encoder: str, seed: int, uri: str):
    def run(log):
        import torch

        from depthlib.models import build_model, export_released

        torch.manual_seed(seed)
        export_released(build_model(encoder), uri)
        return {"encoder": encoder, "seed": seed}
    return run


def _label(config):
    def run(log):
        from depthlib.pseudo_label import run_pseudo_label

        summary = run_pseudo_label(dataclasses.replace(config), log=log)
        if not summary["labelled"]:
            raise RuntimeError(f"pseudo-labelling labelled no image of {storage.redact(config.input)} "
                               f"(skipped: {summary['skipped_by_reason']})")
        return {k: summary[k] for k in ("images_seen", "labelled", "skipped", "skipped_by_reason")}
    return run


def _evaluate(model: str, config):
    def run(log):
        from depthlib.evaluation.job import run_evaluation

        report = run_evaluation(dataclasses.replace(config), log=log)
        failed = {n: e["error"] for n, e in report["datasets"].items() if "error" in e}
        if failed:
            raise RuntimeError(f"evaluation of {model}: datasets not evaluated: {failed}")
        return {"wall_s": report["wall_s"]}
    return run
