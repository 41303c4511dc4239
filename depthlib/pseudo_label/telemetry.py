"""Counters exported to the Ray dashboard's metrics (``ray.util.metrics``).

``count(name, value, **tags)`` is a no-op outside a Ray worker, so stages stay
testable without a cluster. Exported as ``depthlib_pseudo_label_<name>``.
"""

from __future__ import annotations

_COUNTERS: dict = {}
_DESCRIPTIONS = {
    "labelled": "images labelled",
    "skipped": "inputs skipped (tag: reason)",
    "bytes_read": "bytes of source images read",
    "label_bytes": "bytes of label shards written",
}


def count(name: str, value: float, **tags: str) -> None:
    if value <= 0:
        return
    try:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Counter
    except Exception:
        return
    counter = _COUNTERS.get(name)
    if counter is None:
        counter = Counter(f"depthlib_pseudo_label_{name}", description=_DESCRIPTIONS[name],
                          tag_keys=tuple(sorted(tags)))
        _COUNTERS[name] = counter
    counter.inc(value, tags=tags or None)
