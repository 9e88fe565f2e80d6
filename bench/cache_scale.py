#!/usr/bin/env python
"""Feature cache at scale, with synthetic rows: what an append, a random read and a full key
listing cost as the cache grows (issue 12's measure; this is the baseline of the cache as it
is: pending batches merged into one HDF5 file by ``consolidate``).

For each size N: a cache of N rows (64 float32 features, random SHA-256-like keys) is built,
then, each in a fresh process (so peak RSS is the step's own): append 10k rows in 10 batches
and consolidate, as an extract run does; read 1k random keys; list all keys. Prints a table
and writes it into BENCHMARKS.md (cache-scale markers).

    .venv/bin/python bench/cache_scale.py [--sizes 10000,100000,1000000]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, bench_parser, publish, table_section

DIM = 64
STEP = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from feature_extractor.cache import FeatureCache

cache = FeatureCache({path!r})
rng = np.random.default_rng(int(time.time_ns() % 2**32))
start = time.perf_counter()
if {step!r} == "append":
    for _ in range(10):
        keys = [f"{{k:064x}}" for k in rng.integers(0, 2**63, 1000)]
        cache.append(keys, rng.normal(size=(1000, {dim})).astype(np.float32))
    with cache.lock():
        cache.consolidate()
elif {step!r} == "read":
    keys = list(cache.key_index())
    chosen = [keys[i] for i in rng.choice(len(keys), 1000, replace=False)]
    start = time.perf_counter()
    cache.read(chosen)
else:
    len(cache.key_index())
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def build(path: Path, n: int) -> Path:
    """A cache of n rows, written in 100k-row batches."""
    code = f"""
import sys
import numpy as np
sys.path.insert(0, {str(REPO)!r})
from feature_extractor.cache import FeatureCache
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.weights import parse_choice

spec = FeatureSpec("mobilenet025", parse_choice("none"), weights_sha256="0" * 64)
cache = FeatureCache.create({str(path.parent)!r}, spec, {DIM})
rng = np.random.default_rng(0)
for start in range(0, {n}, 100000):
    m = min(100000, {n} - start)
    cache.append([f"{{k:064x}}" for k in range(start, start + m)], rng.normal(size=(m, {DIM})).astype(np.float32))
    with cache.lock():
        cache.consolidate()
print(cache.path)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def step(path: Path, name: str) -> dict:
    code = STEP.format(repo=str(REPO), path=str(path), step=name, dim=DIM)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    rows = []
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=REPO / "bench" / "out") as folder:
            start = time.perf_counter()
            path = build(Path(folder) / "x", n)
            built = time.perf_counter() - start
            results = {name: step(path, name) for name in ("append", "read", "list")}
            size_mb = path.stat().st_size / 1e6
        rows.append((f"{n:,}", f"{size_mb:.0f}", f"{built:.1f}",
                     *(f"{results[s]['seconds']:.2f} s / {results[s]['peak_rss_mb']:.0f} MB"
                       for s in ("append", "read", "list"))))
        print(" | ".join(rows[-1]), flush=True)
    header = ("rows in the cache", "file MB", "build s", "append 10k rows + consolidate (time / peak RSS)",
              "read 1k random keys", "list all keys")
    section = table_section("cache-scale", "cache_scale.py", "bench-cache-scale", (
        f"Synthetic rows: {DIM} float32 features and a 64-hex key each. Each step runs in a fresh "
        "process (peak RSS is the whole process, Python, numpy and h5py included, about 55 MB at rest). "
        "This is the cache as it is: pending batches merged by rewriting the whole HDF5 file, so "
        "an append costs O(rows in the cache) in time and memory: the quadratic part issue 12 "
        "replaces with append-only segments."), header, rows)
    publish(section, "Feature cache at scale", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
