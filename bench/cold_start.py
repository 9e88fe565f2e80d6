#!/usr/bin/env python
"""A cold one-image predict: a fresh process and a fresh features folder, as a radiologist trying
the tool on one slice, or a container started per job, gets it.

    predict ONE_IMAGE_FOLDER --model M --features-dir FRESH --out CSV

For each model: with the user's runtime cache already holding the exported networks (every run
after the first on a machine), and with an empty one (the first run ever: the ONNX export
included). Wall time (median of 3) and peak RSS of the process. Models, fitted here from the
cached features when missing (bench/out/models): a MobileNetV2 logistic regression without and
with the segmentation network, and `make demo`'s model (a stack on MobileNetV2 + MobileNet with the
segmentation network) when models/demo.joblib exists.

    .venv/bin/python bench/cold_start.py [--features-dir features]     # or: make bench-cold-start
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import MODELS, REPO, SHARED, bench_parser, child_run, publish, table_section

MOBILENETV2 = MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5"
DATA = SHARED / "data"


def fitted(path: Path, features_dir: str, lesions: bool) -> Path:
    """A MobileNetV2 (multiscale, flip) logistic regression on COVID-CT, with the segmentation network or not."""
    if path.exists():
        return path
    cmd = [sys.executable, str(REPO / "cli.py"), "fit", "--clf", "logreg", "-b", "mobilenetv2", "--weights",
           f"mobilenetv2={MOBILENETV2}", "--pooling", "multiscale", "--tta", "flip", "--data",
           str(DATA / "covid-ct"), "--features-dir", features_dir, "--model", str(path)]
    if lesions:
        cmd += ["--lesion-data", str(DATA / "lesion-slices")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "COVIDCT_OFFLINE": "1"})
    return path


def cold_predict(model: Path, image: Path, user_cache: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one predict in a fresh process with a fresh features folder."""
    work = Path(tempfile.mkdtemp(prefix="covidct-cold-"))
    (work / "in").mkdir()
    shutil.copy(image, work / "in" / image.name)
    env = {**os.environ, "COVIDCT_CACHE": str(user_cache), "COVIDCT_OFFLINE": "1", "KERAS_HOME": str(SHARED / "keras")}
    seconds, peak = child_run([sys.executable, str(REPO / "cli.py"), "predict", str(work / "in"), "--model", str(model),
                               "--features-dir", str(work / "features"), "--out", str(work / "p.csv")], env=env)
    shutil.rmtree(work, ignore_errors=True)
    return seconds, peak


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-model", type=Path, default=REPO / "models" / "demo.joblib",
                        help="make demo's model (or one of its configuration, e.g. bench/abstain.py's)")
    args = parser.parse_args()
    if not MOBILENETV2.is_file() or not (DATA / "covid-ct").is_dir():
        print(f"skipped: needs {MOBILENETV2} and {DATA / 'covid-ct'}")
        return 0
    out = Path(args.models_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The file names carry the model format: a bundle of an older format (format 5: the lesion head) is refitted.
    models = [("MobileNetV2 logistic regression, no segmentation network",
               fitted(out / "cold-logreg-f6.joblib", str(args.features_dir), False)),
              ("MobileNetV2 logistic regression with the segmentation network",
               fitted(out / "cold-logreg-lesions-f6.joblib", str(args.features_dir), True))]
    if args.demo_model.exists():
        models.append(("make demo's stack (MobileNetV2 + MobileNet) with the segmentation network", args.demo_model))
    image = sorted((DATA / "covid-ct" / "CT_COVID").glob("*.png"))[0]
    rows = []
    for name, model in models:
        user_cache = Path(tempfile.mkdtemp(prefix="covidct-user-cache-"))
        first = cold_predict(model, image, user_cache)  # the first run on this machine: the export too
        runs = [cold_predict(model, image, user_cache) for _ in range(args.repeats)]
        seconds = statistics.median(s for s, _ in runs)
        rss = max(m for _, m in runs)
        rows.append((name, f"{seconds:.2f}", f"{rss:.0f}", f"{first[0]:.1f}", f"{first[1]:.0f}",
                     "met" if seconds <= 5 and rss <= 1.2 * 1024 else "missed"))
        print(" | ".join(rows[-1]), flush=True)
        shutil.rmtree(user_cache, ignore_errors=True)
    text = (f"`predict` of one new PNG slice in a fresh process with a fresh `--features-dir`: wall time (median of "
            f"{args.repeats}) and peak RSS with the user's runtime cache holding the exported networks (every run after "
            "the first on a machine), and the first run ever (empty cache: the ONNX export included). "
            "Default runtime (ONNX Runtime). Target: <= 5 s and <= 1.2 GB (1229 MiB) with the runtime cache warm.")
    publish(table_section("cold-start", "cold_start.py", "bench-cold-start", text,
                          ("model", "s", "peak MiB", "first run ever s", "first run ever MiB", "target"), rows),
            "Cold start: one image in a fresh process", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
