"""Which rows a training run reads, in which order, and where a resumed run starts.

Pure bookkeeping, no Ray and no I/O (the shard index is built by
``depthlib.training.data``), so it is unit-tested on its own.

* An *item* is one Parquet row group of one shard file: the unit of reading.
* Each epoch visits every item once, in a permutation seeded by
  ``(seed, epoch)``: a fresh, reproducible order per epoch.
* Consecutive items of an epoch's order form a *group* of about
  ``rows_per_group`` rows: the unit of one data-loading task, of in-group
  shuffling and augmentation randomness (seeded by ``(seed, epoch, pos)``), and
  of resume. Group ``g`` (global id) is position ``g % groups_per_epoch`` of
  epoch ``g // groups_per_epoch``; a run reads groups ``0, 1, 2, ...`` and
  stops when ``--steps`` is reached, so epochs simply continue.
* Every group emits exactly as many rows as its items hold (an undecodable row
  travels as a masked-out placeholder), so "group g is fully consumed" is
  known by counting. Workers count the rows they consumed per group
  (:class:`ConsumptionLedger`); at a checkpoint the counts of all workers are
  merged into a :class:`DataPosition`: the first group not fully consumed, and
  the fully consumed groups after it. A resumed run starts at that group and
  skips those; it replays only the groups that were partly consumed (in
  flight) and skips nothing that was not trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np


@dataclass(frozen=True)
class ShardIndex:
    """The training data: files and the row count of each of their row groups.

    ``skipped`` lists files that could not be read as shards, with a reason.
    ``sources`` gives, per file, the index of the ``--data`` source it was
    listed from (empty: one source).
    """

    files: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]  # per file, rows per row group
    skipped: tuple[dict, ...] = ()
    sources: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.files) != len(self.row_groups):
            raise ValueError("one row-group list per file")
        if self.sources and len(self.sources) != len(self.files):
            raise ValueError("one source per file")

    def source_of_file(self, i: int) -> int:
        return self.sources[i] if self.sources else 0

    @property
    def n_rows(self) -> int:
        return sum(sum(rg) for rg in self.row_groups)

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(file_index, row_group, rows)`` arrays over all non-empty row groups."""
        f, r, n = [], [], []
        for i, groups in enumerate(self.row_groups):
            for j, rows in enumerate(groups):
                if rows > 0:
                    f.append(i)
                    r.append(j)
                    n.append(rows)
        return np.asarray(f, np.int64), np.asarray(r, np.int64), np.asarray(n, np.int64)

    def to_dict(self) -> dict:
        return {"files": list(self.files), "row_groups": [list(g) for g in self.row_groups],
                "skipped": list(self.skipped), "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShardIndex":
        return cls(tuple(d["files"]), tuple(tuple(int(x) for x in g) for g in d["row_groups"]),
                   tuple(d.get("skipped", ())), tuple(int(x) for x in d.get("sources", ())))


class GroupPlan:
    """The epoch orders and groups of a :class:`ShardIndex` (see the module docstring).

    ``weights``: one sampling weight per data source (``index.sources``), or
    None to visit every item once per epoch.
    """

    def __init__(self, index: ShardIndex, seed: int, rows_per_group: int,
                 weights: tuple[float, ...] | None = None):
        self.index = index
        self.seed = int(seed)
        self.file_of, self.row_group_of, self.rows_of = index.items()
        self.n_items = len(self.rows_of)
        if self.n_items == 0:
            raise ValueError("the training data has no rows")
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        if self.weights is None:
            self.source_items: list[np.ndarray] = [np.arange(self.n_items)]
            self.quotas = np.asarray([self.n_items])
            self.rows_per_epoch = int(self.rows_of.sum())
        else:
            self.source_items, self.quotas = self._mixture_quotas()
            # A lower bound on an epoch's rows (items of a source differ in size).
            self.rows_per_epoch = int(sum(q * self.rows_of[items].min()
                                          for items, q in zip(self.source_items, self.quotas) if q > 0))
        items_per_epoch = int(self.quotas.sum())
        mean_rows = float(self.rows_of.mean())
        self.items_per_group = max(1, min(items_per_epoch, round(rows_per_group / mean_rows)))
        self.groups_per_epoch = math.ceil(items_per_epoch / self.items_per_group)
        self._orders: dict[int, np.ndarray] = {}

    def _mixture_quotas(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Per source: its item indices and how many of them an epoch takes."""
        n_sources = len(self.weights)
        source = np.asarray([self.index.source_of_file(int(f)) for f in self.file_of], np.int64)
        if any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
            raise ValueError(f"data weights must be >= 0 with a positive sum, got {self.weights}")
        items = [np.flatnonzero(source == s) for s in range(n_sources)]
        total_rows = float(self.rows_of.sum())
        quotas = []
        for s, (w, its) in enumerate(zip(self.weights, items)):
            if w > 0 and not len(its):
                raise ValueError(f"data source {s} (weight {w:g}) has no rows")
            share = w / sum(self.weights) * total_rows
            quotas.append(0 if w == 0 else max(1, round(share / float(self.rows_of[its].mean()))))
        return items, np.asarray(quotas, np.int64)

    def source_shares(self) -> list[dict]:
        """Per source: items and about which share of an epoch's rows it fills,
        and how many passes over it an epoch makes."""
        rows = [float(self.rows_of[items].mean()) * q if len(items) else 0.0
                for items, q in zip(self.source_items, self.quotas)]
        return [{"source": s, "items": int(len(items)), "items_per_epoch": int(q),
                 "row_share": round(r / max(sum(rows), 1e-9), 4),
                 "passes_per_epoch": round(int(q) / max(len(items), 1), 4)}
                for s, (items, q, r) in enumerate(zip(self.source_items, self.quotas, rows))]

    def _source_stream(self, s: int, start: int, count: int) -> np.ndarray:
        """Items ``start .. start + count`` of source ``s``'s endless stream of
        permutations (cycle ``c`` seeded by ``(seed, s, c)``)."""
        items = self.source_items[s]
        n = len(items)
        out = []
        for c in range(start // n, (start + count - 1) // n + 1):
            perm = items[np.random.default_rng([self.seed, 1000 + s, c]).permutation(n)]
            lo, hi = max(start - c * n, 0), min(start + count - c * n, n)
            out.append(perm[lo:hi])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The item indices visited in ``epoch``, in order (a permutation of all
        items without weights; a mixture's picks, shuffled, with them)."""
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.default_rng([self.seed, int(epoch)])
            if self.weights is None:
                order = rng.permutation(self.n_items)
            else:
                picks = np.concatenate([self._source_stream(s, int(epoch) * int(q), int(q))
                                        for s, q in enumerate(self.quotas) if q > 0])
                order = picks[rng.permutation(len(picks))]
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = order
        return order

    def locate(self, group: int) -> tuple[int, int]:
        """``(epoch, position in the epoch)`` of a global group id."""
        return divmod(int(group), self.groups_per_epoch)

    def group_items(self, group: int) -> np.ndarray:
        """Item indices of ``group``, in reading order."""
        epoch, pos = self.locate(group)
        k = self.items_per_group
        return self.epoch_order(epoch)[pos * k:(pos + 1) * k]

    def group_rows(self, group: int) -> int:
        """Rows ``group`` emits (every row of its items, placeholders included)."""
        return int(self.rows_of[self.group_items(group)].sum())

    def end_group(self, start: "DataPosition", rows_needed: int) -> int:
        """A group id past which no run starting at ``start`` needs data: the
        epochs covering ``rows_needed`` rows plus one spare epoch (workers
        never run dry even if a few groups arrive late or some rows are
        placeholders). The groups ``start`` skips emit nothing, so their rows
        are added to what must be covered: after a restart a group still in
        flight at a checkpoint can hold ``next_group`` back while many later
        groups are finished, and a stream ending an epoch early would leave
        the workers without data."""
        skipped = sum(self.group_rows(g) for g in start.skip)
        epochs = math.ceil(max(rows_needed + skipped, 1) / self.rows_per_epoch) + 1
        return (self.locate(start.next_group)[0] + epochs + 1) * self.groups_per_epoch


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream (re)starts: group ``next_group``, skipping ``skip``
    (groups after it that were already fully consumed).

    ``partial``: ``(group, rows consumed)`` of the groups in flight. A run whose
    workers each read their own groups in order (``--deterministic``) consumed
    a prefix of each such group, and resumes by dropping that prefix; the
    shared stream replays those groups whole instead."""

    next_group: int = 0
    skip: frozenset[int] = field(default_factory=frozenset)
    partial: tuple[tuple[int, int], ...] = ()

    def is_done(self, group: int) -> bool:
        """True if ``group`` was fully consumed before this position."""
        return group < self.next_group or group in self.skip

    def to_dict(self) -> dict:
        return {"next_group": self.next_group, "skip": sorted(self.skip),
                "partial": [list(p) for p in self.partial]}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "DataPosition":
        if not d:
            return cls()
        return cls(int(d["next_group"]), frozenset(int(g) for g in d.get("skip", ())),
                   tuple(sorted((int(g), int(c)) for g, c in d.get("partial", ()))))


class ConsumptionLedger:
    """Rows consumed per group by ONE worker since ``start``.

    ``consume(groups)`` takes the ``group`` column of each batch the worker
    trained on. :meth:`merge` combines all workers' counts into the new
    :class:`DataPosition` (every worker can run it on the all-gathered counts
    and get the same answer) and drops finished groups from this ledger.
    """

    def __init__(self, start: DataPosition, resume_partial: bool = False):
        self.start = start
        self.counts: dict[int, int] = {}
        # Rows of in-flight groups consumed before this ledger, when the stream drops
        # them on resume (``DataPosition.partial``): every rank holds them, and
        # merge adds them once, so every rank computes the same position.
        self.base: dict[int, int] = dict(start.partial) if resume_partial else {}

    def consume(self, groups: Iterable[int]) -> None:
        values, counts = np.unique(np.asarray(list(groups) if not isinstance(groups, np.ndarray) else groups,
                                              dtype=np.int64), return_counts=True)
        for g, c in zip(values.tolist(), counts.tolist()):
            self.counts[g] = self.counts.get(g, 0) + c

    def merge(self, all_counts: list[Mapping[int, int]], group_rows) -> DataPosition:
        """The position after the rows counted in ``all_counts`` (one dict per
        worker, this one's included). ``group_rows(g)`` is the number of rows
        of group ``g``. A count above a group's rows means the stream and the
        plan disagree, which must never pass silently."""
        total: dict[int, int] = {}
        for counts in [self.base, *all_counts]:
            for g, c in counts.items():
                total[int(g)] = total.get(int(g), 0) + int(c)
        done = set(self.start.skip)
        for g, c in total.items():
            rows = group_rows(g)
            if c > rows:
                raise RuntimeError(f"data group {g} was consumed {c} times but has {rows} rows: "
                                   f"the data stream does not match the plan")
            if c == rows:
                done.add(g)
        nxt = self.start.next_group
        while nxt in done:
            nxt += 1
        position = DataPosition(nxt, frozenset(g for g in done if g > nxt),
                                tuple(sorted((g, c) for g, c in total.items() if g not in done and g >= nxt)))
        self.counts = {g: c for g, c in self.counts.items() if not position.is_done(g)}
        self.start = position
        return position
