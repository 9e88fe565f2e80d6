"""covidct: screen chest CT images for COVID-19 with deep features.

A thin layer: it parses options, calls feature_extractor/ and classifiers/, and turns domain
errors into one message and a non-zero exit. Exit codes: 0 done; 1 error (message printed,
nothing or only part written); 2 bad command-line usage; 3 done, but some files could not be
read (their reasons are in the output).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from feature_extractor.errors import CovidCTError

EXIT_ERROR, EXIT_PARTIAL = 1, 3
DEFAULT_DATA = "data/COVID-CT"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("covidct-features")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class DomainErrorGroup(click.Group):
    """Turns every domain error into one clear line and exit code 1, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CovidCTError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def default_data() -> str:
    return os.environ.get("COVIDCT_DATA") or DEFAULT_DATA


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator:
    if not sys.stderr.isatty():  # logs and pipes get the summary lines only
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                           show_eta=True) as bar:
        yield bar.update


def _weights(options: tuple[str, ...], backbones: list[str]) -> dict:
    from feature_extractor.weights import parse_weights_options

    return parse_weights_options(options, backbones)


def _model_weights(options: tuple[str, ...], model_path: Path) -> dict | None:
    """--weights overrides for the backbones a saved model uses (None: the model's own)."""
    if not options:
        return None
    from classifiers.bundle import read_manifest

    return _weights(options, [b["name"] for b in read_manifest(model_path)["backbones"]])


def _check_crop(crop: str | None, model_path: Path) -> None:
    """--crop on predict/evaluate only confirms the model's own crop."""
    if crop is None:
        return
    from classifiers.bundle import read_manifest
    from classifiers.predict import crop_option

    trained = {crop_option(b.get("crop")) for b in read_manifest(model_path)["backbones"]}
    if trained != {crop}:
        raise CovidCTError(f"{model_path} was trained with --crop {'/'.join(sorted(trained))}, not "
                           f"--crop {crop}; fit a model on features extracted with --crop {crop}")


def _report_failures(failed: dict[str, str], limit: int = 10) -> None:
    for path, reason in list(failed.items())[:limit]:
        click.echo(f"  {path}: {reason}", err=True)
    if len(failed) > limit:
        click.echo(f"  ... and {len(failed) - limit} more", err=True)


data_option = click.option("--data", type=click.Path(path_type=Path), default=default_data,
                           show_default="$COVIDCT_DATA or data/COVID-CT",
                           help="COVID-CT folder, folder with COVID/ and NonCOVID/, or CSV manifest "
                                "(path,label[,patient,split]).")
features_option = click.option("--features-dir", type=click.Path(file_okay=False, path_type=Path),
                               default="features", show_default=True, help="Feature cache folder.")
weights_option = click.option(
    "--weights", "weights", multiple=True, metavar="imagenet|none|FILE|NAME=FILE",
    help="Weights: imagenet (default; keras' download and cache in $KERAS_HOME/models), none "
         "(random init, tests only), FILE for one backbone, or NAME=FILE per backbone. Repeatable.")
model_weights_option = click.option(
    "--weights", "weights", multiple=True, metavar="NAME=FILE|imagenet",
    help="Where to find the weights the model was trained with, when not where they were "
         "(checked by SHA-256). Default: the model's own. Repeatable.")
batch_option = click.option("--batch-size", type=click.IntRange(1, 4096), default=32,
                            show_default=True, help="Images per forward pass.")
pooling_option = click.option(
    "--pooling", type=click.Choice(["avg", "avgmax", "multiscale"]), default="avg", show_default=True,
    help="avg: global average of the last conv block; avgmax: average and max; multiscale: "
         "average of the last activation at each of the last 3 resolutions.")
tta_option = click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
                          help="Test-time augmentation: flip = mean of image and mirror features.")
crop_option = click.option(
    "--crop", type=click.Choice(["none", "lungs"]), default="none", show_default=True,
    help="lungs: crop each slice to its lung field and black out the rest (text, arrows, bed), "
         "so the model cannot learn the image source; full image, with a warning, where no "
         "lungs are found. Cached separately.")
model_crop_option = click.option(
    "--crop", type=click.Choice(["none", "lungs"]), default=None,
    help="Check that the model was trained with this crop (the model's own crop is always used).")
model_option = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="Model file.  [default: the most recently fitted in models/]")
bootstrap_option = click.option("--bootstrap", "n_boot", type=click.IntRange(100, 100000), default=2000,
                                show_default=True, help="Bootstrap resamples for the 95% CIs.")
explain_method_option = click.option(
    "--explain-method", type=click.Choice(["occlusion", "gradcam"]), default="occlusion", show_default=True,
    help="occlusion: any classifier, the stack too (about 50 forward passes per image and backbone); "
         "gradcam: linear heads (logreg) only, one forward pass.")
offline_option = click.option("--offline", is_flag=True, default=None,
                              help="Never download weights (also: COVIDCT_OFFLINE=1).")


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="covidct")
@click.option("--verbose", "-v", is_flag=True, help="Also log what the library is doing.")
def main(verbose: bool) -> None:
    """Screen chest CT images for COVID-19 with frozen ImageNet CNN features.

    \b
    Typical use:
      covidct extract --backbone mobilenetv2     # CNN features -> features/*.h5
      covidct fit --clf xgboost                  # tuned by patient-grouped CV
      covidct evaluate                           # metrics on the official test split
      covidct predict scans/                     # -> predictions.csv

    Research use only, not for clinical diagnosis.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)


@main.command()
def backbones() -> None:
    """List the registered backbones and whether their ImageNet weights are here offline."""
    from feature_extractor.backbones import BACKBONES
    from feature_extractor.weights import imagenet_file, keras_models_dir

    click.echo(f"ImageNet weights are looked up in keras' cache: {keras_models_dir()}/ "
               "(set KERAS_HOME to change it)\n")
    header = f"{'name':<15} {'input':>7} {'dim':>5}  {'offline':<7}  imagenet weights file"
    click.echo(header)
    click.echo("-" * len(header))
    for spec in BACKBONES.values():
        here = "yes" if imagenet_file(spec).is_file() else "no"
        size = f"{spec.input_size[0]}x{spec.input_size[1]}"
        click.echo(f"{spec.name:<15} {size:>7} {spec.feature_dim:>5}  {here:<7}  {spec.imagenet_file}")
    click.echo("\n'no': keras downloads the file on first use (needs internet), or pass "
               "--weights NAME=FILE.")


@main.command()
@click.option("--backbone", "-b", "backbone_names", multiple=True, required=True,
              help="Backbone name (see `backbones`). Repeatable.")
@data_option
@weights_option
@features_option
@batch_option
@pooling_option
@tta_option
@click.option("--window", default="-600,1500", show_default=True, metavar="LEVEL,WIDTH",
              help="DICOM window in HU applied before the CNN (lungs: -600,1500).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "mixed"]), default="fp32",
              show_default=True, help="Inference precision: bf16 for CPUs with AVX512-BF16/AMX, "
                                      "mixed (float16) for GPUs. Cached separately.")
@crop_option
@offline_option
def extract(backbone_names, data, weights, features_dir, batch_size, pooling, tta, window, precision,
            crop, offline) -> None:
    """Extract CNN features of every image of a dataset into the feature cache.

    Images already cached (same bytes, same backbone and weights) are not run again.
    """
    from feature_extractor.dataset import load_dataset
    from feature_extractor.extract import FeatureExtractor
    from feature_extractor.images import parse_window

    names = list(backbone_names)
    choices = _weights(weights, names)
    dataset = load_dataset(data)
    click.echo(f"{len(dataset.records)} images in {data} ({dataset.layout} layout)")
    any_failed = False
    for name in dict.fromkeys(choices):
        extractor = FeatureExtractor(name, choices[name], features_dir, batch_size, offline=offline,
                                     pooling=pooling, augment=tta, window=parse_window(window),
                                     precision=precision, crop=crop)
        extractor.weights  # fail on unavailable weights before a progress bar is drawn
        with progress_bar(f"{name:<14}", len(dataset.records)) as update:
            report = extractor.extract(dataset.records, update)
        click.echo(report.summary())
        if report.weights.source == "none":
            click.secho("  warning: weights=none is random init; these features are for tests only",
                        fg="yellow", err=True)
        if report.crop_fallbacks:
            click.secho(f"  warning: no plausible lungs found in {len(report.crop_fallbacks)} images; "
                        "their full image was used:", fg="yellow", err=True)
            _report_failures(report.crop_fallbacks, limit=5)
        if report.failed:
            any_failed = True
            _report_failures(report.failed)
    if any_failed:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.option("--clf", type=click.Choice(["svm", "rf", "xgboost", "logreg", "stack"]), required=True,
              help="Classifier; stack = every backbone x every --base classifier, with a logistic "
                   "meta-learner on their out-of-fold probabilities.")
@click.option("--base", default="svm,rf,xgboost", show_default=True, metavar="CLF,CLF,...",
              help="Base classifiers of the stack.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Pick the decision threshold on out-of-fold training predictions to reach "
                   "this COVID recall (e.g. 0.95). Default threshold: 0.5.")
@click.option("--backbone", "-b", "backbone_names", multiple=True,
              help="Backbone(s) whose features are concatenated. Default: every backbone with "
                   "cached features for the training images.")
@data_option
@features_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to save the model.  [default: models/<clf>.joblib]")
@click.option("--weights", "weights", multiple=True, metavar="NAME=imagenet|none|FILE",
              help="Pick the cache of these weights when several exist. Repeatable.")
@click.option("--cv-folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="Patient-grouped CV folds for tuning.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--pooling", type=click.Choice(["avg", "avgmax", "multiscale"]), default=None,
              help="Use features of this pooling when several are cached.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default=None,
              help="Use features of this test-time augmentation when several are cached.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "mixed"]), default=None,
              help="Use features of this precision when several are cached.")
@click.option("--crop", type=click.Choice(["none", "lungs"]), default=None,
              help="Use features of this crop when several are cached.")
def fit(clf, base, target_sensitivity, backbone_names, data, features_dir, model_path, weights,
        cv_folds, seed, pooling, tta, precision, crop) -> None:
    """Train a classifier on cached features of the training images (train+val split).

    Hyperparameters are tuned by patient-grouped, stratified CV; the test split is never read.
    """
    from classifiers.train import fit_model

    names = list(backbone_names)
    choices = _weights(weights, names) if weights else None
    if weights and not names:
        raise click.BadParameter("name the backbones with --backbone when using --weights",
                                 param_hint="--weights")
    bases = [b.strip() for b in base.split(",") if b.strip()]
    bundle = fit_model(data, clf, names or None, features_dir, model_path, choices, cv_folds, seed,
                       bases, target_sensitivity, pooling, tta, precision, crop)
    m = bundle.manifest
    t = m["training"]
    click.echo(f"trained {clf} on {t['n_images']} images ({t['n_covid']} COVID, "
               f"{t['n_noncovid']} NonCOVID, {t['n_groups']} {t['grouping']} groups; "
               f"splits: {'+'.join(t['splits'])})")
    click.echo(f"features: {' + '.join(b['name'] for b in m['backbones'])} ({m['feature_dim']} dims, "
               f"crop {m['backbones'][0]['crop']})")
    for b in m["cv"].get("base_models", []):
        click.echo(f"  base {b['block']:<14} {b['classifier']:<8} CV AUC {b['cv_auc']:.3f} "
                   f"+- {b['cv_auc_std']:.3f}  meta weight {b['meta_weight']:+.2f}")
    params = "" if clf == "stack" else f" with {m['params']}"
    click.echo(f"CV AUC {m['cv']['auc']:.3f} +- {m['cv']['auc_std']:.3f}{params}")
    choice = m["threshold_choice"]
    if choice["rule"] != "default":
        click.echo(f"threshold {choice['threshold']:.3f} (out-of-fold sensitivity "
                   f"{choice['oof_sensitivity']:.3f}, specificity {choice['oof_specificity']:.3f})")
    click.echo(f"saved {bundle.path} and {bundle.path.with_suffix('.json')}")


@main.command()
@model_option
@data_option
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
              help="Split to evaluate when the data has the official split (other data: all images).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where metrics.json, report.md and the plots go.  [default: reports/<model>-<split>]")
@click.option("--cv", "cv_folds", type=click.IntRange(2, 20), default=None,
              help="Also refit the model's configuration in K patient-grouped folds of train+val "
                   "and report mean +- sd.")
@bootstrap_option
@features_option
@model_weights_option
@batch_option
@model_crop_option
@offline_option
def evaluate(model_path, data, split, report_dir, cv_folds, n_boot, features_dir, weights, batch_size,
             crop, offline) -> None:
    """Metrics with 95% CIs of a model on held-out labeled images, with plots and a report.

    Default: the official test split. With --data pointing at another labeled folder
    (COVID/ and NonCOVID/) or CSV manifest: all of its images (an external check).
    """
    from classifiers.bundle import latest_model
    from classifiers.evaluation import evaluate_model
    from classifiers.reporting import write_report

    model_path = model_path or latest_model()
    _check_crop(crop, model_path)
    report = evaluate_model(data, model_path, split, features_dir=features_dir, batch_size=batch_size,
                            weights=_model_weights(weights, model_path), progress=progress_bar,
                            offline=offline, n_boot=n_boot, cv_folds=cv_folds)
    n = report.n
    click.echo(f"model {report.model_path} on {report.data} split={report.split} "
               f"(n={n['images']}: {n['COVID']} COVID, {n['NonCOVID']} NonCOVID"
               + (f", {n['patients']} patients" if n.get("patients") else "")
               + f"; threshold {report.threshold:.3f})")
    click.echo(report.table())
    out_dir = report_dir or Path("reports") / f"{Path(model_path).stem}-{report.split}"
    files = write_report(report, out_dir)
    click.echo(f"wrote {files['metrics']}, {files['report']} and 3 plots in {out_dir}/")
    if report.errors:
        _report_failures(report.errors)
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv",
              show_default=True, help="CSV with columns path,p_covid,label,error.")
@click.option("--explain", is_flag=True,
              help="Also write one PNG per image: the slice with a heatmap of the regions that "
                   "raised P(COVID). Occlusion runs 50 variants per image through each backbone: "
                   "1.3 s per image for one MobileNetV2 on 2 CPU cores.")
@click.option("--explain-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the heatmap PNGs go.  [default: heatmaps/ beside --out]")
@explain_method_option
@features_option
@model_weights_option
@batch_option
@model_crop_option
@offline_option
def predict(folder, model_path, out, explain, explain_dir, explain_method, features_dir, weights,
            batch_size, crop, offline) -> None:
    """Predict COVID probabilities for every image under FOLDER (recursively).

    Exit code 3 when some files could not be read: they still get a row, with the reason
    in the `error` column.
    """
    from classifiers.bundle import latest_model, load_bundle
    from classifiers.predict import predict_folder, write_predictions_csv

    model_path = model_path or latest_model()
    _check_crop(crop, model_path)
    model_weights = _model_weights(weights, model_path)
    explainer = None
    if explain:  # fail on an unsuitable method before the long part
        from classifiers.explain import ModelExplainer

        explainer = ModelExplainer(load_bundle(model_path), features_dir, batch_size, model_weights,
                                   offline, explain_method)
    report = predict_folder(folder, model_path, features_dir=features_dir, batch_size=batch_size,
                            weights=model_weights, progress=progress_bar, offline=offline)
    if explainer is not None:
        from classifiers.explain import explain_records

        explain_dir = explain_dir or Path(out).parent / "heatmaps"
        readable = [r for r in report.rows if not r.error]
        with progress_bar("explain       ", len(readable)) as update:
            written = explain_records(explainer, [r.path for r in readable], explain_dir, folder,
                                      float(report.manifest.get("threshold", 0.5)), update)
        for row in readable:
            row.heatmap = written.get(row.path)
        click.echo(f"wrote {len(written)} {explain_method} heatmaps in {explain_dir}/")
    write_predictions_csv(report.rows, out)
    click.echo(report.summary())
    click.echo(f"wrote {out}")
    if report.n_failed:
        _report_failures({r.path: r.error for r in report.rows if r.error})
        sys.exit(EXIT_PARTIAL)


@main.command()
@model_option
@data_option
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
              help="Split to report when the data has the official split.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="report.html",
              show_default=True, help="The HTML file (self-contained: images and script inline).")
@click.option("--heatmaps", type=click.IntRange(0), default=50, show_default=True,
              help="Explain the first N rows of the table (misclassified first); 0: none. On 2 CPU "
                   "cores: 1.3 s per image for one MobileNetV2, 2.9 s for a 3-backbone stack.")
@explain_method_option
@bootstrap_option
@features_option
@model_weights_option
@batch_option
@offline_option
def report(model_path, data, split, out, heatmaps, explain_method, n_boot, features_dir, weights,
           batch_size, offline) -> None:
    """One self-contained HTML report: model card, metrics with CIs, plots, and every image
    with its thumbnail, heatmap and prediction (misclassified first).

    --data: labeled data (as for evaluate) gives metrics; a plain folder of slices gives
    predictions only.
    """
    from classifiers.bundle import latest_model
    from classifiers.html_report import collect, write_html_report

    model_path = model_path or latest_model()
    content = collect(model_path, data, split, features_dir, batch_size, _model_weights(weights, model_path),
                      offline, heatmaps, explain_method, n_boot, progress_bar)
    path = write_html_report(content, out)
    n_wrong = sum(r.misclassified for r in content.rows)
    n_heat = sum(1 for r in content.rows if r.heatmap)
    errors = {r.path: r.error for r in content.rows if r.error}
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(content.rows)} images, "
               f"{n_wrong} misclassified, {n_heat} heatmaps")
    if errors:
        _report_failures(errors)
        sys.exit(EXIT_PARTIAL)


if __name__ == "__main__":
    main()
