"""Parquet files with an image-bytes column as labelling input (the layout of Hugging Face datasets).

Pure functions over an opened ``pyarrow.parquet.ParquetFile``. The image column
is either plain ``binary`` (encoded bytes) or the ``struct<bytes: binary, path:
string>`` that Hugging Face's ``datasets.Image`` feature writes; in the struct
the ``bytes`` field is used and a row whose bytes are null (an image stored
only as a path) is a skip. Rows are addressed by their index in the file: the
order of rows in a Parquet file is fixed, so ``FILE/ROW`` names the same
image on every run. Only the row groups that hold wanted rows are read, and of
them only the image column.
"""

from __future__ import annotations

import bisect
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def image_column_error(schema: pa.Schema, column: str) -> str | None:
    """Why ``column`` of ``schema`` holds no image bytes, or None when it does."""
    if column not in schema.names:
        return f"no column {column!r} (columns: {schema.names}); set --image-column"
    t = schema.field(column).type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return None
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        if idx >= 0 and (pa.types.is_binary(t.field(idx).type) or pa.types.is_large_binary(t.field(idx).type)):
            return None
    return f"column {column!r} is {t}, not binary or a struct with a binary 'bytes' field"


def row_group_starts(pf: pq.ParquetFile) -> list[int]:
    """The index of the first row of each row group, and the total row count last."""
    starts = [0]
    for g in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
    return starts


def _values(column: pa.ChunkedArray) -> list:
    if pa.types.is_struct(column.type):
        column = pa.chunked_array([c.field("bytes") for c in column.chunks], column.type.field("bytes").type)
    return column.to_pylist()


def read_rows(pf: pq.ParquetFile, column: str, rows: list[int]) -> Iterator[tuple[int, bytes | None, str]]:
    """``(row, image bytes, "")`` for each wanted row (in the given order), or
    ``(row, None, why)`` for a row whose image bytes are null or beyond the file."""
    starts = row_group_starts(pf)
    cached_group, cached = -1, []
    for row in rows:
        if not 0 <= row < starts[-1]:
            yield row, None, f"row {row} is beyond the file's {starts[-1]} rows"
            continue
        g = bisect.bisect_right(starts, row) - 1
        if g != cached_group:
            cached_group, cached = g, _values(pf.read_row_group(g, columns=[column]).column(column))
        value = cached[row - starts[g]]
        if value is None:
            yield row, None, f"row {row} has no image bytes in column {column!r}"
        else:
            yield row, bytes(value), ""
