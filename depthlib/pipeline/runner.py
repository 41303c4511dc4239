"""Run stages in order under one storage prefix: skip finished ones, resume, refuse changed settings.

Each stage has a directory ``<storage>/<stage>/`` with its outputs and a
record ``_stage.json``::

    {"stage": "teacher", "settings": {...}, "inputs": {"synthetic": "3f2a..."},
     "complete": false, "started_at": ..., "pipeline_runs": 1}

written when the stage starts, and rewritten with ``"complete": true`` (and
the stage's summary and wall time) only after the stage's job returned and
its declared outputs exist. ``settings`` is the stage's fingerprint: the
settings that decide what its outputs contain, with ``<storage>`` in place of
the storage URI so a moved directory stays valid. ``inputs`` holds a digest of
the settings of each stage it reads from.

Decisions, made for every stage before any stage runs (so a refusal never
comes after an hour of work):

* named in ``--rerun``, or reading from such a stage (transitively): its old
  outputs are moved to ``<storage>/_replaced/<stage>-<time>/`` (or deleted)
  and it runs from scratch;
* complete, same settings and inputs, outputs present: **skipped**;
* no record, or an interrupted one with the same settings: **run**. Every
  stage job resumes on its own (rendering tasks, labelling partitions and
  training checkpoints already written are kept), so this is a resume;
* a record (complete or not) with other settings or inputs: **refused**,
  naming the stage and each differing setting, unless ``--rerun`` names it.

The runner knows nothing of depth models: stages are :class:`Stage` values
with a ``run`` callable (see ``depthlib.pipeline.stages``), which keeps the
logic above testable with cheap fake stages.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from depthlib import storage

RECORD = "_stage.json"
REPLACED = "_replaced"


@dataclass
class Stage:
    """One step of the pipeline.

    ``settings``: JSON-able fingerprint of what the outputs will contain.
    ``run(log)``: does (or resumes) the work and returns a JSON-able summary.
    ``outputs``: paths relative to the stage directory that must exist once the
    stage is complete. ``needs``: the stages whose outputs it reads.
    """

    name: str
    settings: dict
    run: Callable[[Callable[[str], None]], dict]
    outputs: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    describe: str = ""


class StageSettingsChanged(ValueError):
    """A stage already started or finished with other settings; ``stages`` maps names to differences."""

    def __init__(self, message: str, stages: dict[str, list[str]]):
        super().__init__(message)
        self.stages = stages


@dataclass
class Outcome:
    """What happened to one stage in this run."""

    status: str  # "skipped" | "ran" | "resumed" | "rerun"
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def stage_dir(root: str, name: str) -> str:
    return storage.join(root, *name.split("/"))


def record_uri(root: str, name: str) -> str:
    return storage.join(stage_dir(root, name), RECORD)


def read_record(root: str, name: str) -> dict | None:
    uri = record_uri(root, name)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def _normal(value: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings, so saved and fresh settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def digest(settings: dict) -> str:
    """Fingerprint of a stage's settings; unset (None) leaves are left out, as in
    :func:`differences`, so a setting added to the code and left unset keeps it."""
    flat = {k: v for k, v in _flatten(_normal(settings)).items() if v is not None}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(saved: dict, now: dict) -> list[str]:
    """``"name: was X, now Y"`` for every leaf setting that differs (dotted names for nested ones).

    A setting absent on one side and None (unset) on the other is no change, as
    in the training job's own check: a setting added to the code, left unset,
    must not refuse the stages that finished before it existed."""
    a, b = _flatten(_normal(saved)), _flatten(_normal(now))
    return [f"{k}: was {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def rerun_closure(stages: list[Stage], names: Iterable[str]) -> set[str]:
    """The stages named (a group name like ``evaluate`` names every ``evaluate/...``) plus
    every stage that reads from one of them, directly or not. Unknown names are an error."""
    known = [s.name for s in stages]
    chosen: set[str] = set()
    for n in names:
        n = n.strip().strip("/")
        hits = [k for k in known if k == n or k.startswith(n + "/")]
        if not hits:
            raise ValueError(f"--rerun {n!r}: no such stage; the stages are: {', '.join(known)}")
        chosen.update(hits)
    for s in stages:  # in order, so a stage's needs are decided before it
        if any(need in chosen for need in s.needs):
            chosen.add(s.name)
    return chosen


def _check_order(stages: list[Stage]) -> None:
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage {s.name!r} is listed twice")
        unknown = [n for n in s.needs if n not in seen]
        if unknown:
            raise ValueError(f"stage {s.name!r} reads from {unknown}, which do not run before it")
        seen.add(s.name)


def _inputs(stage: Stage, by_name: dict[str, Stage]) -> dict[str, str]:
    return {n: digest(by_name[n].settings) for n in stage.needs}


def plan(root: str, stages: list[Stage], rerun: Iterable[str] = ()) -> dict[str, str]:
    """Decide every stage before anything runs: name -> ``skip`` | ``run`` | ``rerun``
    (``run`` also when its record says it was interrupted: the job resumes).

    Raises :class:`StageSettingsChanged` listing every stage whose record was
    made with other settings or inputs and that ``rerun`` does not cover.
    """
    _check_order(stages)
    by_name = {s.name: s for s in stages}
    again = rerun_closure(stages, rerun)
    decisions: dict[str, str] = {}
    refused: dict[str, list[str]] = {}
    for s in stages:
        if s.name in again:
            decisions[s.name] = "rerun"
            continue
        rec = read_record(root, s.name)
        if rec is None:
            decisions[s.name] = "run"
            continue
        diffs = differences(rec.get("settings", {}), s.settings)
        # An input that is refused itself is named there (re-running it re-runs this stage too).
        diffs += [f"input stage {n} " + ("ran with other settings" if n in rec.get("inputs", {}) else "is new")
                  for n, d in _inputs(s, by_name).items()
                  if rec.get("inputs", {}).get(n) != d and n not in refused]
        if diffs:
            refused[s.name] = diffs
            continue
        complete = rec.get("complete") and all(storage.exists(storage.join(stage_dir(root, s.name), o))
                                               for o in s.outputs)
        decisions[s.name] = "skip" if complete else "run"
    if refused:
        lines = []
        for name, diffs in refused.items():
            rec = read_record(root, name) or {}
            state = "finished" if rec.get("complete") else "was started"
            lines.append(f"stage {name!r} {state} with other settings ({storage.redact(record_uri(root, name))}):")
            lines += [f"    {d}" for d in diffs]
        raise StageSettingsChanged(
            "\n".join(lines) + f"\nKeep the settings it ran with, use another --storage, or re-run it and the stages "
            f"that read from it: --rerun {' '.join(refused)} (old outputs go to "
            f"{storage.redact(storage.join(root, REPLACED))}/, or are deleted with --discard-replaced).", refused)
    return decisions


def _objects(prefix: str) -> list[storage.ObjectInfo]:
    return list(storage.list_objects(prefix))


def move_aside(root: str, name: str, discard: bool, log: Callable[[str], None]) -> str | None:
    """Move (or delete) everything under a stage's directory; returns where it went."""
    src = stage_dir(root, name)
    objects = _objects(src)
    if not objects:
        return None
    if discard:
        for o in objects:
            storage.delete(o.uri)
        log(f"[pipeline] {name}: deleted {len(objects)} old output files")
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dst = storage.join(root, REPLACED, *f"{name}-{stamp}".split("/"))
    if storage.is_remote(root):
        for o in objects:  # server-side copies, then deletes: the old outputs stay readable until moved
            storage.copy(o.uri, storage.join(dst, o.key))
            storage.delete(o.uri)
    else:
        import os
        import shutil

        os.makedirs(os.path.dirname(storage.local_path(dst)), exist_ok=True)
        shutil.move(storage.local_path(src), storage.local_path(dst))
    log(f"[pipeline] {name}: old outputs moved to {storage.redact(dst)}")
    return dst


def _write_record(root: str, stage: Stage, inputs: dict[str, str], **fields) -> None:
    rec = {"stage": stage.name, "settings": _normal(stage.settings), "inputs": inputs, **fields}
    storage.write_bytes(record_uri(root, stage.name), json.dumps(rec, indent=2, sort_keys=True).encode())


def run_stages(root: str, stages: list[Stage], rerun: Iterable[str] = (), discard_replaced: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Run ``stages`` in order under ``root`` with the skip / run / refuse rules above."""
    decisions = plan(root, stages, rerun)
    by_name = {s.name: s for s in stages}
    todo = [n for n, d in decisions.items() if d != "skip"]
    log(f"[pipeline] {len(stages)} stages under {storage.redact(root)}: "
        + (f"{len(stages) - len(todo)} finished before, to run: {', '.join(todo)}" if todo else "all finished before"))
    outcomes: dict[str, Outcome] = {}
    for i, s in enumerate(stages, 1):
        decision = decisions[s.name]
        what = f" ({s.describe})" if s.describe else ""
        if decision == "skip":
            rec = read_record(root, s.name) or {}
            log(f"[pipeline] {i}/{len(stages)} {s.name}: finished before, skipped")
            outcomes[s.name] = Outcome("skipped", 0.0, rec.get("summary", {}))
            continue
        previous = read_record(root, s.name)
        if decision == "rerun":
            move_aside(root, s.name, discard_replaced, log)
            previous = None
        status = {"rerun": "rerun", "run": "resumed" if previous else "ran"}[decision]
        log(f"[pipeline] {i}/{len(stages)} {s.name}{what}: "
            + {"rerun": "running again", "resumed": "resuming an interrupted run", "ran": "running"}[status])
        inputs = _inputs(s, by_name)
        runs = int((previous or {}).get("pipeline_runs", 0)) + 1
        t0 = time.time()
        _write_record(root, s, inputs, complete=False, started_at=t0, pipeline_runs=runs)
        summary = s.run(log) or {}
        missing = [o for o in s.outputs if not storage.exists(storage.join(stage_dir(root, s.name), o))]
        if missing:
            raise RuntimeError(f"stage {s.name!r} returned without its outputs {missing} under "
                               f"{storage.redact(stage_dir(root, s.name))}")
        seconds = round(time.time() - t0, 1)
        _write_record(root, s, inputs, complete=True, started_at=t0, finished_at=time.time(), seconds=seconds,
                      pipeline_runs=runs, summary=_normal(summary))
        log(f"[pipeline] {s.name}: done in {seconds:.0f}s")
        outcomes[s.name] = Outcome(status, seconds, _normal(summary))
    return outcomes
