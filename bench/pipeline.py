#!/usr/bin/env python
"""Wall time and peak memory of the user-facing steps, as real CLI processes (cold starts).

Steps: extract 3 backbones on the 746 COVID-CT images (fresh cache); the same again, fully
cached; fit --clf stack with grouped CV; predict on one image in a fresh process (the image
cached, and not). Medians over repeats where a step is cheap enough to repeat. Prints a table
and writes it into BENCHMARKS.md.

    .venv/bin/python bench/pipeline.py          # or: make bench-pipeline
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MODELS, REPO, SHARED, machine, markdown_table, publish

CLI = [sys.executable, str(REPO / "cli.py")]
BACKBONES = {  # the three with real offline weights here
    "mobilenetv2": str(MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5"),
    "mobilenet": str(MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"),
    "mobilenet025": "imagenet",  # keras' own file, found offline through KERAS_HOME
}
START, END = "<!-- pipeline:start -->", "<!-- pipeline:end -->"
# Runs one command and reports its wall time and the peak RSS of it and its children.
_RUNNER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode; "
           "print(json.dumps({'rc': rc, 's': time.perf_counter() - t, "
           "'mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def measure(cmd: list[str], env: dict, repeats: int = 1) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _RUNNER, *cmd], capture_output=True, text=True, env=env)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["rc"] != 0:
            raise SystemExit(f"failed ({result['rc']}): {' '.join(cmd)}")
        runs.append(result)
    return {"s": statistics.median(r["s"] for r in runs), "mib": max(r["mib"] for r in runs),
            "n": repeats, "all": [round(r["s"], 2) for r in runs]}


def main() -> int:
    data = Path(os.environ.get("COVIDCT_DATA", SHARED / "data" / "covid-ct"))
    if not data.is_dir() or not all(Path(w).is_file() for w in BACKBONES.values() if w != "imagenet"):
        print("skipped: needs the dataset and the offline weights in ../shared")
        return 0
    work = Path(tempfile.mkdtemp(prefix="covidct-bench-"))
    env = {**os.environ, "KERAS_HOME": str(SHARED / "keras"), "COVIDCT_OFFLINE": "1"}
    feats, model = work / "features", work / "models" / "stack.joblib"
    weights = [a for name, w in BACKBONES.items() for a in ("--weights", f"{name}={w}")]
    backbones = [a for name in BACKBONES for a in ("-b", name)]
    extract = CLI + ["extract", *backbones, *weights, "--data", str(data), "--features-dir", str(feats)]
    one = work / "one"
    one.mkdir()
    sample = sorted((data / "CT_COVID").iterdir())[0]
    shutil.copy(sample, one / "cached.png")
    fresh = work / "fresh"
    fresh.mkdir()
    from PIL import Image, ImageOps  # a slice the cache has never seen
    ImageOps.mirror(Image.open(sample).convert("RGB")).save(fresh / "new.png")
    rows = []

    def step(label: str, cmd: list[str], target: str, repeats: int = 1) -> None:
        m = measure(cmd, env, repeats)
        rows.append((label, f"{m['s']:.2f}", f"{m['mib']:.0f}", str(m["n"]), target))
        print(f"{label}: {m['s']:.2f} s median of {m['all']}, peak {m['mib']:.0f} MiB", flush=True)

    step("extract 3 backbones, 746 images, empty cache", extract, "")
    step("the same, fully cached (no CNN, no TensorFlow)", extract, "< 3 s", repeats=5)
    step("fit --clf stack (3 backbones x svm/rf/xgboost, grouped CV)",
         CLI + ["fit", "--clf", "stack", "--data", str(data), "--features-dir", str(feats),
                "--model", str(model), *backbones], "< 120 s")
    predict = CLI + ["predict", "--model", str(model), "--features-dir", str(feats), "--out", str(work / "p.csv")]
    step("predict 1 image, fresh process, image cached", predict + [str(one)], "< 10 s", repeats=3)
    # A fresh features dir copy each time would be fairer, but the new image is the only
    # row added; its first run pays the 3 CNN builds, later ones find it cached.
    step("predict 1 new image, fresh process (3 CNNs built)", predict + [str(fresh)], "< 10 s")
    shutil.rmtree(work, ignore_errors=True)

    header = ("step", "wall s (median)", "peak MiB", "runs", "target")
    lines = [START, "", f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by "
             "`.venv/bin/python bench/pipeline.py` (`make bench-pipeline`). Each step is a fresh "
             "`cli.py` process; peak memory is the process's maximum RSS.", "",
             *markdown_table(header, rows)]
    section = "\n".join(lines + ["", END])
    publish(section, "Pipeline: wall time and memory", REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
