#!/usr/bin/env python
"""GPU check: extract the shared COVID-CT slices with MobileNetV2 and MobileNet on whatever
device the Keras backend finds, check the features against reference features computed on a
CPU, and print images/s per backbone and batch size.

Two steps, because the GPU machines have JAX and PyTorch but no TensorFlow:
- here (TensorFlow, CPU): `python bench/gpu_check.py --write-reference` writes
  bench/out/gpu_reference.npz (features of every image, by content key);
- there: `bash bench/gpu_check.sh` (installs what is missing from carried wheels, then runs
  this script with KERAS_BACKEND=jax, or torch).
Prints a table and writes $OUT/gpu_check.json. Features: multiscale pooling + flip TTA, fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("COVIDCT_SHARED", REPO.parent / "shared"))
WEIGHTS = {"mobilenetv2": SHARED / "keras/models/mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": SHARED / "keras/models/mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
REFERENCE = REPO / "bench" / "out" / "gpu_reference.npz"


def run(backbone: str, records, batch_size: int) -> tuple[dict[str, np.ndarray], float, str]:
    """Features by key, seconds, and the device, for one fresh extraction."""
    from covidct_core.run_context import RunContext
    from feature_extractor.cache.feature_cache import FeatureCache
    from feature_extractor.extract import FeatureExtractor
    from feature_extractor.feature_spec import FeatureSpec
    from feature_extractor.weights import parse_choice

    spec = FeatureSpec(backbone, parse_choice(str(WEIGHTS[backbone])), pooling="multiscale", tta="flip")
    with tempfile.TemporaryDirectory() as folder:
        extractor = FeatureExtractor(spec, RunContext(folder, batch_size=batch_size, offline=True))
        extractor.model  # built (and compiled on first call) outside the timing below
        extractor.features_of(np.zeros((batch_size, *spec.input_size, 3), np.uint8))
        start = time.perf_counter()
        report = extractor.extract(records)
        seconds = time.perf_counter() - start
        keys = [r.key for r in report.records]
        features = FeatureCache(report.cache_path).read(keys)
    return dict(zip(keys, features)), seconds, report.device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=SHARED / "data" / "covid-ct")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--limit", type=int, default=None, help="first N images only (a quick try)")
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--write-reference", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    from feature_extractor.imaging.dataset import load_unlabeled, with_keys

    records = with_keys(sorted(load_unlabeled(args.data).records, key=lambda r: r.path)[:args.limit])
    if args.write_reference:
        reference = {}
        for backbone in WEIGHTS:
            features, _, device = run(backbone, records, 32)
            reference.update({f"{backbone}/{k}": v for k, v in features.items()})
        Path(args.reference).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.reference, **reference)
        print(f"wrote {args.reference}: {len(records)} images x {len(WEIGHTS)} backbones ({device})")
        return 0
    reference = np.load(args.reference)
    rows = []
    for backbone in WEIGHTS:
        for batch_size in map(int, args.batch_sizes.split(",")):
            features, seconds, device = run(backbone, records, batch_size)
            diff = max(float(np.abs(v - reference[f"{backbone}/{k}"]).max()) for k, v in features.items())
            rows.append({"backbone": backbone, "batch_size": batch_size, "images": len(features),
                         "img_per_s": len(features) / seconds, "max_abs_diff_vs_cpu": diff, "device": device})
            print(f"{backbone:<12} batch {batch_size:>4}: {rows[-1]['img_per_s']:8.1f} img/s, "
                  f"max |diff| vs CPU {diff:.2e} ({device})", flush=True)
    out = Path(args.out) / "gpu_check.json"
    out.write_text(json.dumps({"keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "runs": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0 if all(r["max_abs_diff_vs_cpu"] < 1e-3 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
