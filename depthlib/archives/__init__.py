"""Containers as labelling input: tar archives (plain, gzip, tars of tars) and Parquet files.

- :mod:`depthlib.archives.tar`: indexing and reading tar members (pure, file objects);
- :mod:`depthlib.archives.parquet`: image bytes from a Parquet column (pure);
- :mod:`depthlib.archives.sources`: which objects are containers, their plan entries
  (key + locator) and reading entries from storage;
- :mod:`depthlib.archives.stage`: the labelling job's decoding stage over containers.

LSUN's LMDB databases are not read (an LMDB needs random access to one file
with the ``lmdb`` package; export them to images or Parquet first).
"""

from depthlib.archives.sources import container_kind, plan_entries, read_entries

__all__ = ["container_kind", "plan_entries", "read_entries"]
