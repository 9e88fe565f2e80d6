#!/usr/bin/env python
"""Extraction throughput: our path vs the naive per-image loop, GFLOP/s vs a matmul ceiling,
fp32 vs bf16. Weights are random (speed does not depend on them).

Same images, same process, same model objects for (a) and (b). Prints a table and writes it
into BENCHMARKS.md.

    .venv/bin/python bench/throughput.py [--images 48] [--repeats 3]   # or: make bench-throughput
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
from common import REPO, SHARED, machine, markdown_table, publish

from feature_extractor.backbones import get_backbone, preprocess_function  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import Record, load_dataset  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402

BACKBONES = ("vgg16", "resnet50", "densenet121", "efficientnetb0", "mobilenetv2")
START, END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def model_flops(model) -> float:
    """FLOPs of one forward pass per image: 2 x multiply-adds of conv and dense layers."""
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out = layer.output.shape
        if kind == "Dense":
            total += 2.0 * layer.input.shape[-1] * out[-1]
            continue
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        if kind == "DepthwiseConv2D":
            total += 2.0 * out[1] * out[2] * kh * kw * c_in * layer.depth_multiplier
        else:
            total += 2.0 * out[1] * out[2] * kh * kw * (c_in // layer.groups) * out[-1]
    return total


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    mm = tf.function(lambda x: tf.matmul(x, x))
    mm(a).numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a).numpy()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def ours(name: str, records: list[Record], precision: str, repeats: int) -> tuple[float, object]:
    """Images/s of FeatureExtractor.extract (decode, preprocess, inference, cache write)."""
    ex = FeatureExtractor(FeatureSpec(name, "none", precision=precision))
    model = ex.model  # built once: time the data path, not the build
    rates = []
    for i in range(repeats + 1):  # the first run warms up (traces the graph)
        ex.context = RunContext(tempfile.mkdtemp(), batch_size=32)  # a fresh, empty cache each run
        start = time.perf_counter()
        ex.extract(records)
        if i:
            rates.append(len(records) / (time.perf_counter() - start))
    return statistics.median(rates), model


def naive(name: str, records: list[Record], model, repeats: int) -> float:
    """What many peers do: open one image, model.predict on a batch of 1, repeat."""
    from PIL import Image

    spec = get_backbone(name)
    preprocess = preprocess_function(spec)
    rates = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        for rec in records:
            img = Image.open(rec.path).convert("RGB").resize(spec.input_size[::-1])
            x = preprocess(np.asarray(img, dtype=np.float32)[None])
            model.predict(x, verbose=0)
        if i:
            rates.append(len(records) / (time.perf_counter() - start))
    return statistics.median(rates)


def bf16_accuracy_check(data: Path, features_dir: Path) -> list[tuple[str, str, str]]:
    """Test AUC of the same SVM on fp32 vs bf16 features of real pretrained MobileNet v1."""
    from accuracy import OFFLINE_WEIGHTS

    from classifiers.workflows.evaluate import evaluate_model
    from classifiers.workflows.features import FeatureSelection
    from classifiers.workflows.model import load_model
    from classifiers.settings import FitSettings
    from classifiers.workflows.train import fit_model

    choice = OFFLINE_WEIGHTS["mobilenet"]
    if not Path(choice.path).is_file():
        return []
    dataset = load_dataset(data)
    rows = []
    context = RunContext(features_dir, offline=True)
    for precision in ("fp32", "bf16"):
        FeatureExtractor(FeatureSpec("mobilenet", choice, precision=precision), context).extract(dataset.records)
        model = features_dir / f"svm-{precision}.joblib"
        selection = FeatureSelection(("mobilenet",), {"mobilenet": choice},
                                     {"precision": precision, "pooling": "avg", "tta": "none"})
        fit_model(data, fit=FitSettings("svm"), selection=selection, context=context, model_path=model)
        m = evaluate_model(load_model(model, context), data, "test", n_boot=200).metrics
        rows.append((precision, f"{m['roc_auc']['value']:.4f}", f"{m['accuracy']['value']:.4f}"))
        print("bf16 check", rows[-1], flush=True)
    return rows


RUNTIME_MODELS = (  # what the product runs: the demo's pooled features and the segmentation network's maps
    ("mobilenetv2 pooled (multiscale, 224 px)", "mobilenetv2", dict(pooling="multiscale")),
    ("mobilenet pooled (multiscale, 224 px)", "mobilenet", dict(pooling="multiscale")),
    ("mobilenetv2 segmentation maps (256 px, strides 4-32)", "mobilenetv2", dict(input_size=(256, 256), maps=True)),
)


def runtimes_table(records: list[Record], repeats: int) -> tuple[list[tuple[str, ...]], str]:
    """CNN forward passes per second on each installed runtime (same preprocessed batches of 32,
    real weights where the offline files are here), and the largest difference from TensorFlow."""
    from accuracy import OFFLINE_WEIGHTS

    from feature_extractor.segmentation.encoder import MapExtractor
    from covidct_core.run_settings import RUNTIMES, check_runtime

    installed = []
    for runtime in RUNTIMES:
        try:
            check_runtime(runtime)
            installed.append(runtime)
        except Exception as exc:  # not installed: said in the table's text
            print(f"{runtime}: {exc}", flush=True)
    rows = []
    for label, name, settings in RUNTIME_MODELS:
        choice = OFFLINE_WEIGHTS.get(name)
        weights = choice if choice is not None and Path(choice.path or "").is_file() else "none"
        spec = FeatureSpec(name, weights, **settings)
        cls = MapExtractor if spec.maps else FeatureExtractor
        size = spec.input_size
        images = np.stack([FeatureExtractor(FeatureSpec(name, "none", input_size=size)).load(r.path)[0]
                           for r in records[:32]])
        rates, outputs = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for runtime in installed:
                ex = cls(spec, RunContext(tmp, runtime=runtime))
                x = ex.preprocess(images)
                run = ex.forward()
                out = run(x)  # warm-up (and export, build); the maps: their first
                outputs[runtime] = np.asarray(out[0] if isinstance(out, list) else out, np.float32)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - start)
                rates[runtime] = len(images) / statistics.median(times)
        tf_rate = rates["tensorflow"]
        cells = []
        for runtime in RUNTIMES:
            if runtime not in rates:
                cells.append("not installed")
                continue
            diff = float(np.abs(outputs[runtime] - outputs["tensorflow"]).max())
            cells.append(f"{rates[runtime]:.1f} ({rates[runtime] / tf_rate:.2f}x" +
                         ("" if runtime == "tensorflow" else f", max diff {diff:.1e}") + ")")
        rows.append((label, "real" if weights != "none" else "random", *cells))
        print(" | ".join(rows[-1]), flush=True)
    return rows, ", ".join(installed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--runtimes-only", action="store_true", help="only the runtime table")
    args = parser.parse_args()
    data = Path(os.environ.get("COVIDCT_DATA", SHARED / "data" / "covid-ct"))
    if not data.is_dir():
        print(f"skipped: needs the dataset at {data}")
        return 0
    records = list(load_dataset(data).records)[:: max(1, 746 // args.images)][: args.images]
    runtime_rows, installed = runtimes_table(records, max(3, args.repeats))
    runtime_section = "\n".join([
        "<!-- runtimes:start -->", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by `.venv/bin/python bench/throughput.py` "
        f"(`make bench-throughput`): CNN forward passes per second (the network alone, a preprocessed batch of 32 "
        f"COVID-CT slices, median of {max(3, args.repeats)} after a warm-up) on each runtime installed here "
        f"({installed}; `pip install -e \".[onnx]\"` / `\".[openvino]\"`), with the ratio to TensorFlow and the largest "
        "difference of the outputs from TensorFlow's. `--runtime` picks one; TensorFlow stays the default unless "
        "another is 1.3x faster and within 1e-4.", "",
        *markdown_table(("network", "weights", "tensorflow img/s", "onnxruntime img/s", "openvino img/s"),
                        runtime_rows), "", "<!-- runtimes:end -->"])
    publish(runtime_section, "CPU runtimes", REPO / "BENCHMARKS.md")
    if args.runtimes_only:
        return 0
    ceiling = {p: matmul_gflops(d) for p, d in (("fp32", "float32"), ("bf16", "bfloat16"))}
    print(f"matmul ceiling: fp32 {ceiling['fp32']:.0f} GFLOP/s, bf16 {ceiling['bf16']:.0f} GFLOP/s", flush=True)
    rows = []
    for name in args.backbones.split(","):
        fp32_rate, model = ours(name, records, "fp32", args.repeats)
        naive_rate = naive(name, records, model, max(1, args.repeats - 1))
        bf16_rate, _ = ours(name, records, "bf16", args.repeats)
        gflop = model_flops(model) / 1e9
        row = (name, f"{gflop:.2f}", f"{naive_rate:.1f}", f"{fp32_rate:.1f}", f"{fp32_rate / naive_rate:.1f}x",
               f"{fp32_rate * gflop:.0f}", f"{fp32_rate * gflop / ceiling['fp32']:.0%}",
               f"{bf16_rate:.1f}", f"{bf16_rate / fp32_rate:.2f}x")
        rows.append(row)
        print(" | ".join(row), flush=True)

    auc_rows = bf16_accuracy_check(data, Path(tempfile.mkdtemp()))

    header = ("backbone", "GFLOP/img", "naive img/s", "ours fp32 img/s", "ours/naive",
              "ours GFLOP/s", "of fp32 matmul", "ours bf16 img/s", "bf16/fp32")
    lines = [START, "", f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by "
             f"`.venv/bin/python bench/throughput.py` (`make bench-throughput`): {len(records)} "
             f"COVID-CT images, median of {args.repeats} runs after a warm-up, batch 32, random "
             f"weights. Same-run matmul ceiling (2048x2048, tf.function): fp32 "
             f"{ceiling['fp32']:.0f} GFLOP/s, bf16 {ceiling['bf16']:.0f} GFLOP/s. 'naive' opens "
             "one image and calls model.predict on a batch of 1; 'ours' is FeatureExtractor.extract "
             "(threaded decode one batch ahead, compiled predict_on_batch, cache write).", "",
             *markdown_table(header, rows)]
    if auc_rows:
        lines += ["", "Does bf16 change the answers? The same SVM on real pretrained MobileNet v1 "
                  "(avg-pooled) features, official split:", "",
                  "| precision | test AUC | test accuracy |", "|---|---|---|"]
        lines += [f"| {p} | {a} | {c} |" for p, a, c in auc_rows]
    section = "\n".join(lines + ["", END])
    publish(section, "Throughput", REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
