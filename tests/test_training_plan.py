"""The data plan of training: epoch orders, groups, and exact resume positions (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthlib.training.loop import rebatch
from depthlib.training.plan import ConsumptionLedger, DataPosition, GroupPlan, ShardIndex


def _index() -> ShardIndex:
    # 3 files, 10 row groups, one of them empty (dropped): 9 items, 36 rows
    return ShardIndex(("a", "b", "c"), ((4, 6, 4), (4, 4, 0), (5, 3, 2, 4)))


def test_items_skip_empty_row_groups_and_count_rows():
    idx = _index()
    files, rgs, rows = idx.items()
    assert len(rows) == 9 and rows.sum() == idx.n_rows == 36
    assert (files[3:5] == [1, 1]).all() and list(rgs[3:5]) == [0, 1]
    assert ShardIndex.from_dict(idx.to_dict()) == idx


def test_every_epoch_visits_every_item_once_in_a_fresh_reproducible_order():
    plan = GroupPlan(_index(), seed=3, rows_per_group=8)
    assert plan.items_per_group == 2 and plan.groups_per_epoch == 5
    orders = []
    for epoch in range(3):
        items = np.concatenate([plan.group_items(epoch * 5 + pos) for pos in range(5)])
        assert sorted(items.tolist()) == list(range(9))  # each item exactly once per epoch
        orders.append(items.tolist())
    assert orders[0] != orders[1] != orders[2]
    again = GroupPlan(_index(), seed=3, rows_per_group=8)
    assert [again.group_items(g).tolist() for g in range(15)] == [plan.group_items(g).tolist() for g in range(15)]
    other = GroupPlan(_index(), seed=4, rows_per_group=8)
    assert [other.group_items(g).tolist() for g in range(5)] != [plan.group_items(g).tolist() for g in range(5)]
    # rows of an epoch's groups add up to the data
    assert sum(plan.group_rows(g) for g in range(5, 10)) == 36


def test_end_group_covers_the_rows_needed_plus_a_spare_epoch():
    plan = GroupPlan(_index(), seed=0, rows_per_group=8)
    start = 7  # epoch 1, position 2
    end = plan.end_group(DataPosition(start), rows_needed=100)
    assert sum(plan.group_rows(g) for g in range(start, end)) >= 100 + plan.rows_per_epoch
    # a group held back after a restart, with the next two epochs' groups already trained on: the
    # stream must still hold the rows needed in groups it does not skip (seen: a run ran dry)
    held = DataPosition(start, frozenset(range(start + 1, start + 11)))
    end = plan.end_group(held, rows_needed=100)
    assert sum(plan.group_rows(g) for g in range(start, end) if not held.is_done(g)) >= 100 + plan.rows_per_epoch


def _two_sources() -> ShardIndex:
    # source 0: 2 files, 4 items of 5 rows (20 rows); source 1: 1 file, 10 items of 2 rows (20 rows)
    return ShardIndex(("a", "b", "c"), ((5, 5), (5, 5), (2,) * 10), sources=(0, 0, 1))


def _epoch_items(plan: GroupPlan, epoch: int) -> list[int]:
    g = plan.groups_per_epoch
    return np.concatenate([plan.group_items(epoch * g + pos) for pos in range(g)]).tolist()


def test_mixture_fills_each_sources_share_of_the_rows():
    idx = _two_sources()
    assert ShardIndex.from_dict(idx.to_dict()) == idx
    # weights 1:3 of 40 rows per epoch: source 0 fills 10 rows = 2 of its 5-row items,
    # source 1 fills 30 rows = 15 of its 2-row items (all 10, then 5 of its next pass)
    plan = GroupPlan(idx, seed=1, rows_per_group=10, weights=(1.0, 3.0))
    assert plan.quotas.tolist() == [2, 15]
    for epoch in range(4):
        items = _epoch_items(plan, epoch)
        rows = plan.rows_of[items]
        assert len(items) == 17 and rows.sum() == 40
        assert sum(r for i, r in zip(items, rows) if i < 4) == 10  # items 0..3 are source 0's
    shares = plan.source_shares()
    assert [s["row_share"] for s in shares] == [0.25, 0.75] and shares[1]["passes_per_epoch"] == 1.5
    # source 0 (4 items, 2 per epoch) is walked through whole before any item repeats
    seen = [i for e in range(4) for i in _epoch_items(plan, e) if i < 4]
    assert sorted(seen[:4]) == [0, 1, 2, 3] and sorted(seen[4:]) == [0, 1, 2, 3]
    # source 1's stream: epoch 0 takes one whole pass plus 5, epoch 1 the rest of pass 2 plus pass 3
    first = np.bincount([i - 4 for i in _epoch_items(plan, 0) if i >= 4], minlength=10)
    assert sorted(first.tolist()) == [1] * 5 + [2] * 5
    both = np.bincount([i - 4 for e in range(2) for i in _epoch_items(plan, e) if i >= 4], minlength=10)
    assert both.tolist() == [3] * 10
    # reproducible, and a weight of 0 leaves a source out
    again = GroupPlan(idx, seed=1, rows_per_group=10, weights=(1.0, 3.0))
    assert [_epoch_items(again, e) for e in range(3)] == [_epoch_items(plan, e) for e in range(3)]
    only0 = GroupPlan(idx, seed=1, rows_per_group=10, weights=(1.0, 0.0))
    assert set(_epoch_items(only0, 0)) <= {0, 1, 2, 3} and only0.quotas.tolist() == [8, 0]


def test_mixture_end_group_and_resume_counting_hold():
    plan = GroupPlan(_two_sources(), seed=2, rows_per_group=6, weights=(5.0, 1.0))
    end = plan.end_group(DataPosition(3), rows_needed=200)
    assert sum(plan.group_rows(g) for g in range(3, end)) >= 200 + plan.rows_per_epoch
    ledger = ConsumptionLedger(DataPosition())
    for g in range(4):
        ledger.consume([g] * plan.group_rows(g))
    assert ledger.merge([ledger.counts], plan.group_rows) == DataPosition(4)


def test_mixture_refuses_bad_weights():
    with pytest.raises(ValueError, match="positive sum"):
        GroupPlan(_two_sources(), seed=0, rows_per_group=8, weights=(0.0, 0.0))
    empty = ShardIndex(("a", "b"), ((5,), (0,)), sources=(0, 1))
    with pytest.raises(ValueError, match="source 1 .* has no rows"):
        GroupPlan(empty, seed=0, rows_per_group=8, weights=(1.0, 1.0))


def test_position_is_done_and_round_trip():
    p = DataPosition(5, frozenset({7, 9}))
    assert [g for g in range(11) if p.is_done(g)] == [0, 1, 2, 3, 4, 7, 9]
    assert DataPosition.from_dict(p.to_dict()) == p
    assert DataPosition.from_dict(None) == DataPosition()


def _rows(g: int) -> int:
    return 4


def test_ledger_merges_workers_and_finds_first_unfinished_group():
    a, b = ConsumptionLedger(DataPosition()), ConsumptionLedger(DataPosition())
    a.consume([0, 0, 0, 0, 2, 2, 3])  # group 0 whole, group 2 half (split across workers), group 3 one row
    b.consume([1, 1, 1, 1, 2, 2, 4, 4, 4, 4])  # group 1 whole, group 2 the other half, group 4 whole
    gathered = [dict(a.counts), dict(b.counts)]  # what all_gather gives every worker
    pos = a.merge(gathered, _rows)
    assert pos == DataPosition(3, frozenset({4}), partial=((3, 1),))
    assert b.merge(gathered, _rows) == pos  # every worker computes the same position
    assert a.counts == {3: 1} and b.counts == {}  # finished groups are forgotten
    # later: group 3 finishes on worker b; the position moves past 4 (already done)
    b.consume([3, 3, 3, 5])
    gathered = [dict(a.counts), dict(b.counts)]
    assert gathered == [{3: 1}, {3: 3, 5: 1}]
    pos2 = a.merge(gathered, _rows)
    assert pos2 == DataPosition(5, frozenset(), partial=((5, 1),)) == b.merge(gathered, _rows)
    assert a.counts == {} and b.counts == {5: 1}


def test_ledger_starting_from_a_resume_position_keeps_its_skips():
    start = DataPosition(10, frozenset({12, 13}))
    led = ConsumptionLedger(start)
    led.consume([10] * 4 + [11] * 2)
    assert led.merge([led.counts], _rows) == DataPosition(10 + 1, frozenset({12, 13}), partial=((11, 2),))
    led.consume([11, 11])
    assert led.merge([led.counts], _rows) == DataPosition(14, frozenset())


def test_ledger_refuses_a_stream_that_does_not_match_the_plan():
    led = ConsumptionLedger(DataPosition())
    led.consume([0] * 5)
    with pytest.raises(RuntimeError, match="does not match the plan"):
        led.merge([led.counts], _rows)


def test_resume_replays_in_flight_groups_and_skips_nothing():
    """Simulate a stream consumed out of order by two workers, a checkpoint,
    and a restart: every row is trained on at least once, and only rows of
    groups in flight at the checkpoint twice."""
    rng = np.random.default_rng(0)
    rows = {g: int(rng.integers(1, 6)) for g in range(40)}
    stream = [g for g in range(40) for _ in range(rows[g])]
    # out-of-order arrival within a window of 3 groups
    order = sorted(range(len(stream)), key=lambda i: stream[i] + rng.uniform(0, 3))
    consumed = [stream[i] for i in order[:70]]
    workers = [ConsumptionLedger(DataPosition()) for _ in range(2)]
    for i, g in enumerate(consumed):
        workers[i % 2].consume([g])
    pos = workers[0].merge([w.counts for w in workers], rows.get)
    resumed = [g for g in stream if not pos.is_done(g)]
    seen = consumed + resumed
    assert all(seen.count(g) >= rows[g] for g in rows)  # nothing skipped
    replayed = {g for g in rows if seen.count(g) > rows[g]}
    counts = {g: consumed.count(g) for g in set(consumed)}
    assert replayed == {g for g, c in counts.items() if 0 < c < rows[g]}  # only partly consumed groups


def _batches(groups: list[list[int]]):
    for gs in groups:
        g = torch.tensor(gs)
        yield {"group": g, "x": g * 10}


def test_rebatch_passes_full_batches_and_refills_after_drops():
    out = list(rebatch(_batches([[0, 1, 2], [3, 4, 5]]), 3, lambda b: torch.ones(len(b["group"]), dtype=bool)))
    assert [b["group"].tolist() for b in out] == [[0, 1, 2], [3, 4, 5]]
    out = list(rebatch(_batches([[0, 1, 2], [3, 4, 5], [6, 7, 8]]), 3, lambda b: b["group"] % 2 == 0))
    assert [b["group"].tolist() for b in out] == [[0, 2, 4], [6, 8]][:1]  # the incomplete tail is held back
    assert [b["x"].tolist() for b in out] == [[0, 20, 40]]


def _write_shards(prefix, n_files: int, rows: int) -> None:
    import io

    from PIL import Image

    from depthlib import shards

    buf = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buf, format="PNG")
    for f in range(n_files):
        shards.write_shard([shards.make_row(f"{prefix.name}/{f}/{i}", buf.getvalue(), "png",
                                            np.full((6, 8), 2.0, np.float32), depth_type="metric_depth",
                                            kind="synthetic") for i in range(rows)],
                           str(prefix / f"part-{f}.parquet"))


def test_weighted_data_sources_index_and_config(tmp_path):
    from depthlib.training.config import TrainConfig
    from depthlib.training.data import build_shard_index

    _write_shards(tmp_path / "hypersim", 2, 3)
    _write_shards(tmp_path / "vkitti", 1, 5)
    cfg = TrainConfig(stage="teacher", output=str(tmp_path / "run"),
                      data=[f"{tmp_path / 'hypersim'}:1", f"{tmp_path / 'vkitti'}:3"])
    assert cfg.data_weights() == (1.0, 3.0) and cfg.data_uris()[1] == str(tmp_path / "vkitti")
    index = build_shard_index(cfg.data)
    assert index.n_rows == 11 and sorted(index.sources) == [0, 0, 1]
    plan = GroupPlan(index, seed=0, rows_per_group=4, weights=cfg.data_weights())
    assert [s["row_share"] for s in plan.source_shares()] == pytest.approx([0.25, 0.75], abs=0.1)
    assert TrainConfig(stage="teacher", output="o", data=[str(tmp_path / "vkitti")]).data_weights() is None
    with pytest.raises(ValueError, match="every source or to none"):
        TrainConfig(stage="teacher", output="o", data=[f"{tmp_path / 'hypersim'}:1", str(tmp_path / "vkitti")])
    with pytest.raises(ValueError, match="under two weighted"):
        build_shard_index([f"{tmp_path}:1", f"{tmp_path / 'vkitti'}:1"])


def test_in_flight_groups_resume_after_their_consumed_prefix():
    """--deterministic: a group half consumed at a checkpoint resumes after its
    consumed rows; the resumed ledgers (every rank holds the base) finish it."""
    plan = GroupPlan(_index(), seed=0, rows_per_group=8)
    rows = [plan.group_rows(g) for g in range(3)]
    workers = [ConsumptionLedger(DataPosition()) for _ in range(2)]
    workers[0].consume([0] * rows[0] + [2] * 3)
    workers[1].consume([1] * 2)
    counts = [w.counts for w in workers]
    pos = workers[0].merge(counts, plan.group_rows)
    assert pos == workers[1].merge(counts, plan.group_rows)
    assert pos.next_group == 1 and pos.partial == ((1, 2), (2, 3))
    assert DataPosition.from_dict(pos.to_dict()) == pos
    resumed = [ConsumptionLedger(pos, resume_partial=True) for _ in range(2)]
    resumed[0].consume([2] * (rows[2] - 3))
    resumed[1].consume([1] * (rows[1] - 2))
    counts = [w.counts for w in resumed]
    assert resumed[0].merge(counts, plan.group_rows) == resumed[1].merge(counts, plan.group_rows) == DataPosition(3)
    # the shared stream replays in-flight groups whole: its ledger ignores the prefix
    replay = ConsumptionLedger(pos)
    replay.consume([1] * rows[1])
    assert replay.merge([replay.counts], plan.group_rows).next_group == 2
