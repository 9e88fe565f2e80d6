#!/usr/bin/env python
"""What a heatmap costs: seconds per image for occlusion and Grad-CAM, by model.

Uses the models that bench/lung_crop.py fits (bench/out/models; run it first) on real
COVID-CT test slices: a one-backbone SVM and logistic regression, and the three-backbone
stack. Each cell is the median over 6 images after one warm-up image (model building and
tracing excluded). Prints a table and writes it into BENCHMARKS.md (explanations markers).

    .venv/bin/python bench/explanations.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
from common import REPO, SHARED, machine, markdown_table, publish

from classifiers.workflows.explain import ModelExplainer  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.imaging.dataset import load_dataset  # noqa: E402

START, END = "<!-- explain:start -->", "<!-- explain:end -->"
MODELS = REPO / "bench" / "out" / "models"
CASES = [  # (model file, methods)
    ("crop-none-mobilenetv2-svm.joblib", ("occlusion",)),
    ("crop-none-mobilenetv2-logreg.joblib", ("occlusion", "gradcam")),
    ("crop-none-mobilenetv2+mobilenet+mobilenet025-stack.joblib", ("occlusion",)),
]


def naive_occlusion(explainer: ModelExplainer, path: str) -> float:
    """Seconds for the unbatched way: every occluded variant scored on its own."""
    from scipy.ndimage import gaussian_filter

    canvas = explainer.extractors[0].prepare(path).model_input(explainer.canvas_size)
    start = time.perf_counter()
    windows = explainer.occlusion_windows()
    side = windows[0][2] - windows[0][0]
    blurred = np.round(gaussian_filter(canvas.astype(np.float32), sigma=(side / 2, side / 2, 0))).astype(np.uint8)
    explainer.scores(canvas[None])
    for t, l, b, r in windows:
        variant = canvas.copy()
        variant[t:b, l:r] = blurred[t:b, l:r]
        explainer.scores(variant[None])
    return time.perf_counter() - start


def main() -> int:
    data = os.environ.get("COVIDCT_DATA", SHARED / "data" / "covid-ct")
    if not Path(data).is_dir() or not all((MODELS / m).is_file() for m, _ in CASES):
        print("skipped: needs the dataset and the models of bench/lung_crop.py")
        return 0
    test = [r.path for r in load_dataset(data).records if r.split == "test"][:7]
    rows = []
    for model_file, methods in CASES:
        model = load_model(MODELS / model_file, RunContext(REPO / "features", offline=True))
        for method in methods:
            explainer = ModelExplainer(model, method=method)
            explainer.explain(test[0])  # warm-up: weights, graph tracing
            times = []
            for path in test[1:]:
                start = time.perf_counter()
                explainer.explain(path)
                times.append(time.perf_counter() - start)
            backbones = " + ".join(s.backbone for s in model.specs)
            naive = ""
            if method == "occlusion":  # the same 50 variants, one forward pass each
                naive_times = [naive_occlusion(explainer, path) for path in test[1:4]]
                naive = f"{np.median(naive_times):.2f} ({np.median(naive_times) / np.median(times):.1f}x)"
            rows.append((backbones, model.card.classifier, method, f"{np.median(times):.2f}", naive))
            print(" | ".join(rows[-1]), flush=True)
    section = "\n".join([START, "", f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by "
                         "`.venv/bin/python bench/explanations.py`: seconds per image, median of 6 "
                         "COVID-CT test slices after a warm-up. Features: multiscale pooling + flip TTA "
                         "(each backbone runs twice per variant). Occlusion: 49 patch positions + the "
                         "original in one batch per backbone; the naive column scores the same variants one "
                         "forward pass each (median of 3 images).", "",
                         *markdown_table(("backbones", "classifier", "method", "s / image",
                                          "naive: one variant per call (ratio)"), rows), "", END])
    publish(section, "Explanations", REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
