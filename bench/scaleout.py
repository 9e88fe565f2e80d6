#!/usr/bin/env python
"""Local vs ray engine on this machine, and a projection on paper for 200k and 10M slices.

Extracts the same real images (COVID-CT and MosMed slices) (shared MobileNetV2 / MobileNet weights, avg pooling)
into fresh caches with the local engine and with the ray engine on a local Ray limited to this
machine's cores: wall time with start-up (Ray, the actor's TensorFlow and model) and the
steady rate (first to last finished batch). Also the per-image costs the projection uses:
decoding alone (read, window, resize) and the CNN alone, both measured here.

Writes a table into BENCHMARKS.md (scaleout markers).

    .venv/bin/python bench/scaleout.py [--images N] [--backbones mobilenetv2,mobilenet]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MODELS, REPO, SHARED, bench_parser, markdown_table, publish, table_section

WEIGHTS = {"mobilenetv2": MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
# Paper projection: node and price assumptions (stated in the table's text, not measured).
CPU_NODE_CORES = 16
CPU_NODE_PRICE = 0.68   # $/h, a 16-vCPU general-purpose cloud node (on-demand, 2026 list prices)
GPU_PRICE = 3.00        # $/h, one data-centre GPU with 8 vCPUs for decoding
GPU_DECODE_CORES = 8


class Timeline:
    """A progress factory that notes when images finish."""

    def __init__(self):
        self.stamps: list[tuple[float, int]] = []

    def __call__(self, label, total):
        import contextlib

        return contextlib.nullcontext(lambda n: n and self.stamps.append((time.perf_counter(), n)))

    def steady_rate(self) -> float:
        """Images per second from the first finished batch to the last."""
        (t0, n0), (t1, _) = self.stamps[0], self.stamps[-1]
        return (sum(n for _, n in self.stamps) - n0) / max(t1 - t0, 1e-9)


def run(records, spec, folder: Path, engine) -> tuple[float, float, str]:
    from covidct_core.run_context import RunContext
    from feature_extractor.extract import FeatureExtractor

    timeline = Timeline()
    context = RunContext(folder, batch_size=32, offline=True, progress=timeline, engine=engine)
    start = time.perf_counter()
    report = FeatureExtractor(spec, context).extract(records)
    assert report.n_new == len(records), report.summary()
    return time.perf_counter() - start, timeline.steady_rate(), report.cache_path


def per_image_costs(records, spec) -> tuple[float, float]:
    """Seconds per image: decoding on one core; the CNN on this machine (batch 32, warm)."""
    from feature_extractor.extract import FeatureExtractor

    extractor = FeatureExtractor(spec)
    sample = records[:64]
    start = time.perf_counter()
    images = np.stack([extractor.load(r.path)[0] for r in sample])
    decode = (time.perf_counter() - start) / len(sample)
    extractor.features_of(images[:32])  # build and trace
    start = time.perf_counter()
    for _ in range(3):
        extractor.features_of(images[:32])
        extractor.features_of(images[32:64])
    cnn = (time.perf_counter() - start) / (6 * 32)
    return decode, cnn


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def projection(decode_s: float, cnn_core_s: float, startup_s: float, n_images: int, nodes: int) -> tuple[str, str]:
    """Wall time and dollars for ``n_images`` on ``nodes`` CPU nodes of CPU_NODE_CORES cores: the
    per-image costs scaled by cores (decode and CNN share them), plus the measured start-up."""
    per_node = CPU_NODE_CORES / (decode_s + cnn_core_s)
    seconds = startup_s + n_images / (per_node * nodes)
    return duration(seconds), f"${seconds / 3600 * nodes * CPU_NODE_PRICE:.2f}"


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--second-source", default=SHARED / "data" / "mosmed-slices")
    parser.add_argument("--images", type=int, default=0, help="at most this many (default: all of both sources)")
    parser.add_argument("--backbones", default="mobilenetv2,mobilenet")
    args = parser.parse_args()
    import os

    import ray

    from covidct_core.run_settings import EngineSettings
    from feature_extractor.feature_spec import FeatureSpec
    from feature_extractor.imaging.dataset import load_datasets
    from feature_extractor.weights import parse_choice

    cores = os.cpu_count() or 1
    sources = [args.data] + ([args.second_source] if Path(args.second_source).exists() else [])
    records = sorted(load_datasets(sources).records, key=lambda r: r.path)[:args.images or None]
    rows, costs = [], {}
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "COVIDCT_OFFLINE": "1"}})
    try:
        for backbone in args.backbones.split(","):
            spec = FeatureSpec(backbone, parse_choice(str(WEIGHTS[backbone])))
            with tempfile.TemporaryDirectory(dir=REPO / "bench" / "out") as folder:
                local_s, local_rate, local_path = run(records, spec, Path(folder) / "local", EngineSettings())
                ray_s, ray_rate, ray_path = run(records, spec, Path(folder) / "ray", EngineSettings("ray"))
                from feature_extractor.cache.feature_cache import FeatureCache

                keys = FeatureCache(local_path).keys()
                diff = float(np.abs(FeatureCache(local_path).read(keys) - FeatureCache(ray_path).read(keys)).max())
            decode, cnn = per_image_costs(records, spec)
            startup = ray_s - len(records) / ray_rate
            costs[backbone] = (decode, cnn * cores, startup)  # CNN in core-seconds per image
            rows.append((backbone, str(len(records)), f"{len(records) / local_s:.1f}",
                         f"{len(records) / ray_s:.1f}", f"{local_s / ray_s:.0%}", f"{startup:.0f} s",
                         f"{local_rate:.1f}", f"{ray_rate:.1f}", f"{diff:.1e}",
                         f"{decode * 1000:.1f}", f"{cnn * cores * 1000:.1f}"))
            print(" | ".join(rows[-1]), flush=True)
    finally:
        ray.shutdown()

    header = ("backbone", "images", "local img/s (wall)", "ray img/s (wall)", "ray / local (wall)",
              "ray start-up", "local img/s (after 1st batch)", "ray img/s (after 1st batch)", "largest feature difference",
              "decode ms/img (1 core)", "CNN core-ms/img")
    proj_rows = []
    for backbone, (decode, cnn_core, startup) in costs.items():
        for n_images in (200_000, 10_000_000):
            for nodes in (1, 8, 64):
                wall, dollars = projection(decode, cnn_core, startup, n_images, nodes)
                proj_rows.append((backbone, f"{n_images:,}", f"{nodes} x {CPU_NODE_CORES}-core CPU node", wall, dollars))
            decode_rate = GPU_DECODE_CORES / decode
            for gpus in (1, 8):
                seconds = startup + n_images / (decode_rate * gpus)
                proj_rows.append((backbone, f"{n_images:,}", f"{gpus} GPU{'s' * (gpus > 1)} (bound: decoding on "
                                  f"{GPU_DECODE_CORES} cores each)", duration(seconds),
                                  f"${seconds / 3600 * gpus * GPU_PRICE:.2f}"))
    text = (f"The same {len(records)} images (COVID-CT and MosMed slices), batch 32, avg pooling, shared real weights, fresh caches; "
            f"Ray local, {cores} CPUs, 1 CNN actor, decoding in tasks. 'wall' includes start-up (Ray, the actor's "
            "TensorFlow and model build: local builds its model too, Ray also starts itself and an actor "
            "process); 'after 1st batch' is first to last finished batch (Ray decodes ahead in tasks while "
            "its actor starts, so its rate there is close to the CNN alone). Target: ray >= 80% of local on "
            "the same cores.")
    section = table_section("scaleout", "scaleout.py", "bench-scaleout", text, header, rows)
    lines = section.splitlines()
    projection_text = [
        "", "Projection on paper from the per-image costs above (not measured at scale): a CPU node does "
        f"{CPU_NODE_CORES} / (decode + CNN core-seconds) images per second, at ${CPU_NODE_PRICE}/h for a "
        f"{CPU_NODE_CORES}-vCPU node, plus the Ray start-up measured above; Ray's per-batch overhead is "
        "assumed as small as here. GPU rows: no GPU was measured (the device machine was not lent to this task); a "
        "MobileNet on a data-centre GPU runs thousands of images per second, so decoding on the GPU "
        f"node's {GPU_DECODE_CORES} cores bounds it; ${GPU_PRICE}/h per GPU. Prices are assumptions. Heavier backbones scale the CNN column: VGG16 runs at 7.3 img/s where MobileNetV2 runs at 61.9 (Throughput table, fp32), so about 8x the CPU rows' time and cost (about 1.7x with --precision bf16).", "",
        *markdown_table(("backbone", "slices", "cluster", "wall time", "cost"), proj_rows)]
    section = "\n".join(lines[:-2] + projection_text + lines[-2:])
    publish(section, "Scale-out: local vs Ray engine", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
