"""Containers as labelling input: tar archives (plain, gzip, tars of tars), Parquet files
and LMDB databases (LSUN).

- :mod:`depthlib.archives.tar`: indexing and reading tar members (pure, file objects);
- :mod:`depthlib.archives.parquet`: image bytes from a Parquet column (pure);
- :mod:`depthlib.archives.lmdb`: where an LMDB file keeps its values (pure, ranged reads);
- :mod:`depthlib.archives.sources`: which objects are containers, their plan entries
  (key + locator) and reading entries from storage;
- :mod:`depthlib.archives.stage`: the labelling job's decoding stage over containers.
"""

from depthlib.archives.sources import container_kind, plan_entries, read_entries

__all__ = ["container_kind", "plan_entries", "read_entries"]
