#!/usr/bin/env python
"""A bounded load test of `serve` on loopback: 20 clients x 10 requests, one slice each.

Half the requests send slices whose features are cached (COVID-CT images), half send new
ones (COVID-CT images with one pixel changed: new bytes, new key, a CNN run); then a second
load of new slices only, whose rate is set beside extract's rate for new slices of the same
network and the runtime's raw forward rate, all measured in this run. Each response's
Server-Timing header says where its time went (save, queue, cnn, score, pictures); the rest
of the client's latency is HTTP, multipart parsing and JSON. The server is
`cli.py serve` in its own process with one MobileNetV2 logistic-regression model (both sources,
multiscale + flip; fitted here from the cached features when bench/out/models has none) and a
fresh feature cache; the clients are threads of this process, each with its keep-alive httpx
client (one per request would spend ~20 ms of these cores' CPU on each). Latency p50/p95, throughput, errors, and the server's resident memory sampled
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
    from covidct_core.run_context import RunContext

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


def stages_of(response) -> dict[str, float]:
    """The Server-Timing header's stages, in seconds."""
    header = response.headers.get("server-timing", "")
    return {k: float(v) / 1000 for k, v in (part.split(";dur=") for part in header.split(", ") if ";dur=" in part)}


def offline_rates(features_root: str, images: list[Path], n: int) -> tuple[float, float]:
    """extract's rate for n new slices (fresh caches, decoding included) of the served model's networks,
    and the runtime's raw forward rate (preprocessed batches of 32), in slices/s."""
    from classifiers.workflows.model import load_model
    from feature_extractor.imaging.dataset import Record, with_keys
    from covidct_core.run_context import RunContext

    folder = Path(tempfile.mkdtemp(dir=features_root))
    for i in range(n):
        (folder / f"x{i}.png").write_bytes(new_slice(images[i % len(images)], 100_000 + i))
    model = load_model(MODEL, RunContext(Path(tempfile.mkdtemp(dir=features_root)), offline=True, batch_size=32))
    records = with_keys([Record(str(p)) for p in sorted(folder.glob("*.png"))])
    model.features(records[:32])  # the runtime's session started, as in the warm server
    start = time.perf_counter()
    model.features(records[32:])
    extract_rate = (len(records) - 32) / (time.perf_counter() - start)
    forward_rates = []
    for ex in model.extractors:
        run = ex.forward()
        x = ex.preprocess(np.zeros((32, *ex.spec.input_size, 3), np.uint8))
        run(x)
        start = time.perf_counter()
        for _ in range(5):
            run(x)
            if ex.spec.tta == "flip":
                run(x[:, :, ::-1, :].copy())
        forward_rates.append(5 * 32 / (time.perf_counter() - start))
    return extract_rate, 1 / sum(1 / r for r in forward_rates)


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

    only_new = [new_slice(images[i % len(images)], 50_000 + i) for i in range(n)]

    clients = threading.local()  # one keep-alive client per client thread, as a real client holds one

    def http() -> httpx.Client:
        if not hasattr(clients, "http"):
            clients.http = httpx.Client(timeout=600)  # making one costs ~20 ms of CPU (its SSL context)
        return clients.http

    def one(i: int, data: bytes | None = None):
        is_cached = data is None and i % 2 == 0
        if data is None:
            data = cached[i % len(cached)] if is_cached else fresh[i // 2]
        start = time.perf_counter()
        stages = {}
        try:
            response = http().post(url, files=[("files", (f"s{i}.png", data, "image/png"))])
            ok = response.status_code == 200 and response.json()["images"][0]["error"] is None
            stages = stages_of(response)
        except httpx.HTTPError:
            ok = False
        return is_cached, time.perf_counter() - start, ok, stages

    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        new_only = list(pool.map(lambda i: one(i, only_new[i]), range(n)))
    new_wall = time.perf_counter() - start
    server.terminate()
    server.wait(timeout=60)
    extract_rate, forward_rate = offline_rates(str(REPO / "bench" / "out"), images, 4 * 32 + 32)

    rows = []
    for name, keep in (("cached slices", True), ("new slices", False), ("all", None)):
        latency = np.array([t for c, t, _, _ in results if keep is None or c == keep])
        errors = sum(1 for c, _, ok, _ in results if (keep is None or c == keep) and not ok)
        rows.append((name, str(len(latency)), f"{np.median(latency):.2f}", f"{np.percentile(latency, 95):.2f}",
                     str(errors)))
    latency = np.array([t for _, t, _, _ in new_only])
    rows.append((f"new slices only (second load): {n / new_wall:.1f} slices/s", str(n), f"{np.median(latency):.2f}",
                 f"{np.percentile(latency, 95):.2f}", str(sum(1 for *_, ok, _ in new_only if not ok))))
    profile = []
    for name, part in (("cached slices (first load)", [r for r in results if r[0]]),
                       ("new slices (first load)", [r for r in results if not r[0]]),
                       ("new slices only (second load)", new_only)):
        per = {k: np.array([r[3].get(k, 0.0) for r in part]) for k in ("save", "decode", "queue", "cnn", "score", "pictures")}
        client = np.array([r[1] for r in part])
        total = np.array([r[3].get("total", 0.0) for r in part])
        per["HTTP, multipart, JSON"] = client - total
        mean = client.mean()
        profile.append((name, f"{1000 * mean:.0f}", *(f"{1000 * v.mean():.0f} ({v.mean() / mean:.0%})"
                                                      for v in per.values())))
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
    served = n / new_wall
    text = (f"Where a request's time goes, from each response's Server-Timing header (mean ms per request, share "
            f"of the client's latency): save (upload to disk), decode (new uploads decoded in the request's "
            f"thread while the CNN runs another batch), queue (waiting for a CNN batch), cnn (the batch: resizing, "
            f"forward passes and, for a request of new slices only, its scoring; shared by its requests), score (features from the cache, "
            f"out-of-distribution check, source test, answer), pictures (thumbnail and maps for the page); the rest "
            f"is HTTP, multipart parsing and JSON. Same run: served new slices {served:.1f}/s; extract's rate for "
            f"new slices of the same network (decoding included, fresh caches, in-process) {extract_rate:.1f}/s; the "
            f"runtime's raw forward rate (preprocessed batches of 32, flip TTA included) {forward_rate:.1f}/s. "
            f"Served / extract = {served / extract_rate:.2f}; served / raw forward = {served / forward_rate:.2f}. "
            "Target: served >= 0.50 of extract's rate.")
    publish(table_section("serve-profile", "serve_load.py", "bench-serve-load", text,
                          ("requests", "latency ms", "save", "decode", "queue", "cnn", "score", "pictures",
                           "HTTP, multipart, JSON"), profile), "Web service: where a request's time goes", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
