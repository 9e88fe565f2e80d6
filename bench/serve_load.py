#!/usr/bin/env python
"""A bounded load test of `serve` on loopback: 20 clients x 10 requests, one slice each.

Half the requests send slices whose features are cached (COVID-CT images), half send new
ones (COVID-CT images with one pixel changed: new bytes, new key, a CNN run). The server is
`cli.py serve` in its own process with one MobileNetV2 logistic-regression model (both sources,
multiscale + flip; fitted here from the cached features when bench/out/models has none) and a
fresh feature cache; the clients are threads of this process
with httpx. Latency p50/p95, throughput, errors, and the server's resident memory sampled
through the run (start, thirds, peak) go into BENCHMARKS.md (serve-load markers).

    .venv/bin/python bench/serve_load.py [--clients 20] [--requests 10]
"""
from __future__ import annotations

import io
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import REPO, SHARED, bench_parser, publish, table_section

MODEL = REPO / "bench" / "out" / "models" / "both-crop-none-none-mobilenetv2-logreg.joblib"
BEFORE = 4.5  # requests/s of the same load before dynamic batching (2026-11-29, BENCHMARKS history)


def fitted_model(args) -> None:
    """The load's model, fitted once from the cached features (bench/generalization.py makes the same)."""
    if MODEL.exists():
        return
    from classifiers.workflows.features import FeatureSelection
    from classifiers.settings import FitSettings
    from classifiers.workflows.train import fit_model
    from feature_extractor.run_context import RunContext

    selection = FeatureSelection.from_options(("mobilenetv2",), (), pooling="multiscale", tta="flip", crop="none")
    fit_model([SHARED / "data" / "covid-ct", SHARED / "data" / "mosmed-slices"], fit=FitSettings("logreg"),
              selection=selection, context=RunContext(args.features_dir, offline=True), model_path=MODEL)


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_slice(path: Path, i: int) -> bytes:
    """The image with one pixel changed: other bytes, so a cache miss."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.putpixel((i % image.width, 0), (i % 256, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    import os
    import subprocess

    import httpx

    fitted_model(args)
    images = sorted((SHARED / "data" / "covid-ct" / "CT_COVID").glob("*.png"))[:50]
    features = tempfile.mkdtemp(dir=REPO / "bench" / "out")  # empty: the warm-up request caches the "cached" ones
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "serve", "--model", str(MODEL), "--port", str(port),
                               "--features-dir", features, "--offline"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "COVIDCT_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/api/v1/predict"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    cached = [p.read_bytes() for p in images[:10]]
    httpx.post(url, files=[("files", (f"warm{i}.png", b, "image/png")) for i, b in enumerate(cached)], timeout=600)
    memory = [(0.0, rss_mb(server.pid))]
    stop = threading.Event()

    def sample():
        start = time.perf_counter()
        while not stop.is_set():
            memory.append((time.perf_counter() - start, rss_mb(server.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    n = args.clients * args.requests
    fresh = [new_slice(images[i % len(images)], i) for i in range(n // 2)]

    def one(i: int):
        data = cached[i % len(cached)] if i % 2 == 0 else fresh[i // 2]
        start = time.perf_counter()
        try:
            response = httpx.post(url, files=[("files", (f"s{i}.png", data, "image/png"))], timeout=600)
            ok = response.status_code == 200 and response.json()["images"][0]["error"] is None
        except httpx.HTTPError:
            ok = False
        return i % 2 == 0, time.perf_counter() - start, ok

    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    server.terminate()
    server.wait(timeout=60)

    rows = []
    for name, keep in (("cached slices", True), ("new slices", False), ("all", None)):
        latency = np.array([t for c, t, _ in results if keep is None or c == keep])
        errors = sum(1 for c, _, ok in results if (keep is None or c == keep) and not ok)
        rows.append((name, str(len(latency)), f"{np.median(latency):.2f}", f"{np.percentile(latency, 95):.2f}",
                     str(errors)))
    rss = [m for _, m in memory]
    third = len(rss) // 3
    text = (f"{args.clients} clients x {args.requests} requests of one PNG slice each on loopback (`cli.py serve` "
            f"in its own process, a MobileNetV2 logistic regression, the default runtime; cached slices answered "
            f"without the CNN, new ones dynamically batched): {n / wall:.1f} requests/s over {wall:.0f} s, "
            f"{n / wall / BEFORE:.1f}x the {BEFORE} requests/s before batching. Server process memory (RSS): "
            f"{rss[0]:.0f} MB after "
            f"warm-up, peak {max(rss):.0f} MB; mean of the first / middle / last third of the run "
            f"{np.mean(rss[:third]):.0f} / {np.mean(rss[third:2 * third]):.0f} / {np.mean(rss[2 * third:]):.0f} MB. "
            "Targets: >= 13 requests/s, p95 <= 2 s for cached slices, 0 errors, memory flat.")
    section = table_section("serve-load", "serve_load.py", "bench-serve-load", text,
                            ("requests", "n", "p50 latency s", "p95 latency s", "errors"), rows)
    publish(section, "Web service under load", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
