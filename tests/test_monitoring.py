"""Our metrics as Prometheus sees them: Ray's metrics endpoint on the local cluster.

Every Ray node serves its metrics in the Prometheus text format at
``http://<node ip>:<metrics_export_port>/metrics`` (the dashboard agent does,
with or without the dashboard itself). ``ray.util.metrics`` names are
prefixed with ``ray_``, and counters get Prometheus' ``_total`` suffix, so
``Counter("depthlib_pseudo_label_labelled")`` is scraped as
``ray_depthlib_pseudo_label_labelled_total``. Every series also carries
Ray's labels (``WorkerId``, ``SessionName``, ``NodeAddress``, ...): one series
per worker process, kept after the process exits.

The Grafana dashboard in ``cluster/grafana/`` queries exactly the names
checked here (``tests/test_cluster_configs.py`` checks that it does).
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid

import pytest

from depthlib import storage
from depthlib.pseudo_label import run_pseudo_label
from test_pseudo_label import _config, _upload, make_bucket, teacher  # noqa: F401  (teacher: a fixture)

# Exported names, as scraped (the Grafana dashboard uses these).
LABELLED = "ray_depthlib_pseudo_label_labelled_total"
SKIPPED = "ray_depthlib_pseudo_label_skipped_total"
BYTES_READ = "ray_depthlib_pseudo_label_bytes_read_total"
LABEL_BYTES = "ray_depthlib_pseudo_label_label_bytes_total"
TRAIN_GAUGES = ("loss", "lr", "images_per_s", "val_abs_rel", "val_d1", "step")

POLL_TIMEOUT_S = 45.0  # Ray's workers report every few seconds; the agent serves the latest

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metrics_url() -> str:
    """The Prometheus endpoint of this driver's node: ``metrics_export_port`` of
    the node (the same number ``ray.nodes()`` reports as ``MetricsExportPort``)."""
    import ray

    node = ray._private.worker.global_worker.node
    ports = {n["NodeManagerAddress"]: n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    assert ports.get(node.node_ip_address) == node.metrics_export_port
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


def scrape(url: str) -> dict[str, dict[frozenset, float]]:
    """``{metric name: {frozenset of (label, value): sample value}}`` from one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[frozenset, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            out.setdefault(m.group(1), {})[labels] = float(m.group(3))
    return out


def totals_since(before: dict, after: dict, name: str, by: str | None = None) -> dict[str, float]:
    """Increase of counter ``name`` between two scrapes, summed over worker
    series (per value of label ``by``, or under ``""``). Series are compared
    one by one, so counts other tests left in this session's workers cancel."""
    out: dict[str, float] = {}
    old = before.get(name, {})
    for labels, value in after.get(name, {}).items():
        key = dict(labels).get(by, "") if by else ""
        delta = value - old.get(labels, 0.0)
        if delta:
            out[key] = out.get(key, 0.0) + delta
    return out


def test_labelling_counters_reach_prometheus(ray_session, tmp_path, teacher):  # noqa: F811
    url = metrics_url()
    objects, bad = make_bucket()
    input_uri = _upload(str(tmp_path), objects)
    before = scrape(url)

    summary = run_pseudo_label(_config(input_uri, storage.join(str(tmp_path), "out"), teacher))
    assert summary["labelled"] == len(objects) - len(bad) and summary["skipped"] == len(bad)

    expected = {
        LABELLED: {"": float(summary["labelled"])},
        SKIPPED: {reason: float(n) for reason, n in summary["skipped_by_reason"].items()},
        # every object is read once; an empty one adds nothing
        BYTES_READ: {"": float(sum(len(v) for v in objects.values()))},
        LABEL_BYTES: {"": float(summary["label_bytes"])},
    }
    assert summary["label_bytes"] > 0 and len(expected[SKIPPED]) >= 4

    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        after = scrape(url)
        got = {name: totals_since(before, after, name, by="reason" if name == SKIPPED else None)
               for name in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert got == expected

    # Ray's own labels on every series: the dashboard filters by session, and lists the
    # sessions from Ray's node metric ray_node_cpu_utilization.
    for labels in after[LABELLED]:
        assert {"SessionName", "WorkerId", "NodeAddress"} <= {k for k, _ in labels}
    sessions = {dict(labels)["SessionName"] for labels in after["ray_node_cpu_utilization"]}
    assert {dict(labels)["SessionName"] for labels in after[LABELLED]} <= sessions


def test_training_gauges_reach_prometheus(ray_session):
    """The training loop's gauges (``depthlib.training.records.Gauges``, set by
    rank 0 at every log step), set from a Ray worker as the loop does."""
    import ray

    from depthlib.training.records import GAUGES

    assert set(GAUGES) == set(TRAIN_GAUGES)  # the dashboard has a panel for each
    run = f"monitoring-{uuid.uuid4().hex[:8]}"
    row = {"loss": 0.4375, "lr": 5e-06, "images_per_s": 123.5, "val_abs_rel": 0.0625, "val_d1": 0.953125,
           "step": 1500, "not_a_gauge": 7.0}

    @ray.remote(num_cpus=0)
    class Rank0:  # a long-lived worker process, as a Ray Train worker is
        def set(self, run: str, row: dict) -> None:
            from depthlib.training.records import Gauges

            Gauges(run, "teacher").set(row)

    actor = Rank0.remote()
    ray.get(actor.set.remote(run, row))
    url = metrics_url()
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        scraped = scrape(url)
        got = {name: [value for labels, value in scraped.get(f"ray_depthlib_train_{name}", {}).items()
                      if ("run", run) in labels]
               for name in TRAIN_GAUGES}
        if all(got.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    ray.kill(actor)
    assert got == {name: [pytest.approx(float(row[name]))] for name in TRAIN_GAUGES}
    series = next(labels for labels in scraped["ray_depthlib_train_loss"] if ("run", run) in labels)
    assert ("stage", "teacher") in series
    assert not any("not_a_gauge" in name for name in scraped)
