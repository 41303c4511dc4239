"""How fast the labelling plan lists an LSUN-style LMDB (``depthlib.archives.lmdb``).

    .venv/bin/python benchmarks/lmdb_index.py [--values 60000] [--value-bytes 2500]

Writes an LMDB of random 40-hex-digit keys and random values with the ``lmdb``
package (a dev dependency), then times ``depthlib.archives.plan_entries`` over
its folder (the driver reads the branch pages, threads index the leaf pages in
parts, as Ray tasks would) and prints entries/s, the page reads and the bytes
they fetched against the file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from depthlib.archives import lmdb as lmdb_mod  # noqa: E402
from depthlib.archives import sources  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=int, default=60_000)
    ap.add_argument("--value-bytes", type=int, default=2500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "lsun" / "bench_lmdb"
        folder.mkdir(parents=True)
        env = lmdb.open(str(folder), map_size=1 << 36)
        rng = random.Random(0)
        with env.begin(write=True) as txn:
            for _ in range(args.values):
                txn.put(f"{rng.getrandbits(160):040x}".encode(), os.urandom(args.value_bytes))
        env.close()
        data = folder / "data.mdb"
        t = time.perf_counter()
        n = sum(1 for _ in sources.plan_entries(tmp))
        seconds = time.perf_counter() - t

        class Counting:
            def __init__(self, f):
                self.f, self.reads, self.bytes = f, 0, 0

            def size(self):
                return self.f.size()

            def read_at(self, k, offset):
                self.reads += 1
                self.bytes += k
                return self.f.read_at(k, offset)

        with pa.OSFile(str(data)) as f:
            counting = Counting(f)
            meta, leaves, _ = lmdb_mod.tree_leaves(counting)
            sum(1 for _ in lmdb_mod.leaf_values(counting, meta.page_size, leaves))
        print(json.dumps({
            "values": n, "file_mb": round(data.stat().st_size / 1e6, 1), "depth": meta.depth,
            "leaf_pages": len(leaves), "seconds": round(seconds, 2), "entries_per_s": round(n / seconds),
            "page_reads": counting.reads, "bytes_read_share_of_file": round(counting.bytes / data.stat().st_size, 4),
        }, indent=2))


if __name__ == "__main__":
    main()
