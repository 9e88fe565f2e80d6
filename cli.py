"""covidct: screen chest CT images for COVID-19 with deep features.

A thin layer: it parses options, calls one library function per command (feature_extractor/
and classifiers/workflows/), prints what it returns, and turns domain errors into one
message and a non-zero exit. Exit codes: 0 done; 1 error (message printed,
nothing or only part written); 2 bad command-line usage; 3 done, but some files could not be
read (their reasons are in the output).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

import click

from classifiers.estimators.balance import BALANCES
from classifiers.estimators.options import CALIBRATION_METHODS, DEFAULT_ERROR_RATE, HARMONIZATIONS, LESION_HEADS
from classifiers.estimators.registry import CLASSIFIERS, DEFAULT_BASE, STACK
from classifiers.workflows import prediction_record as record
from classifiers.workflows.explain import METHODS as EXPLAIN_METHODS
from feature_extractor.dataset import SPLITS
from feature_extractor.engine import ENGINES, LOCAL, EngineSettings
from feature_extractor.errors import CovidCTError
from feature_extractor.feature_spec import DENSE_GRID, DENSE_INPUT, SETTING, SETTINGS
from feature_extractor.run_context import RunContext
from feature_extractor.runtimes import RUNTIMES, default_runtime

EXIT_ERROR, EXIT_PARTIAL = 1, 3
DEFAULT_DATA = "data/COVID-CT"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("covidct-features")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class DomainErrorGroup(click.Group):
    """Turns every domain error into one clear line and exit code 1, and every library
    warning into one line of ours, in one place."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            try:
                return super().invoke(ctx)
            except CovidCTError as exc:
                click.secho(f"Error: {exc}", fg="red", err=True)
                sys.exit(EXIT_ERROR)
            except KeyboardInterrupt:
                click.echo("Interrupted.", err=True)
                sys.exit(130)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line of ours, not its multi-line dump."""
    text = (str(message).strip().splitlines() or [category.__name__])[0]
    click.secho(f"  warning: {text} ({category.__name__}, {Path(filename).parent.name}/"
                f"{Path(filename).name}:{lineno})", fg="yellow", err=True)


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


def _context(features_dir: Path, batch_size: int = 32, offline: bool | None = None,
             weights: tuple[str, ...] = (), engine: EngineSettings | None = None,
             runtime: str | None = None) -> RunContext:
    return RunContext(features_dir, batch_size, offline, weights, progress_bar, engine or EngineSettings(),
                      runtime or default_runtime())


def _report_failures(failed: dict[str, str], limit: int = 10) -> None:
    for path, reason in list(failed.items())[:limit]:
        click.echo(f"  {path}: {reason}", err=True)
    if len(failed) > limit:
        click.echo(f"  ... and {len(failed) - limit} more", err=True)


def _finish(lines=(), failures: dict[str, str] | None = None) -> None:
    """Print a command's summary lines; list the files that could not be used and exit 3 when
    there are any (the command still wrote everything else)."""
    for line in lines:
        click.echo(line)
    if failures:
        _report_failures(failures)
        sys.exit(EXIT_PARTIAL)


def _given(name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


def _refuse_together(option: str, others: dict[str, str]) -> None:
    """One line when options that ``option`` makes meaningless (``--flag``: its parameter's
    name) were given with it."""
    given = [flag for flag, name in others.items() if _given(name)]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be used with {option}: "
                               f"{'it is' if len(given) == 1 else 'they are'} ignored there")


def feature_settings(select: bool):
    """The FeatureSpec settings as options (feature_extractor/feature_spec.py SETTINGS): with
    their defaults on extract; as filters (default: any) when ``select``."""
    def decorate(command):
        for setting in reversed(SETTINGS):
            kind = click.Choice(setting.choices) if setting.choices else str
            if select:
                help_text = f"Use features of this {setting.name} when several are cached."
                option = click.option(f"--{setting.name}", type=kind, default=None, metavar=setting.metavar,
                                      help=help_text)
            else:
                option = click.option(f"--{setting.name}", type=kind, default=setting.text(setting.default),
                                      show_default=True, metavar=setting.metavar, help=setting.help)
            command = option(command)
        return command
    return decorate


data_option = click.option("--data", type=click.Path(path_type=Path), multiple=True,
                           default=lambda: (default_data(),), show_default="$COVIDCT_DATA or data/COVID-CT",
                           help="COVID-CT folder, folder with COVID/ and NonCOVID/, or CSV manifest "
                                "(path,label[,patient,split,source]). Repeatable: each is a source, named "
                                "after its folder (or the manifest's source column).")
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
model_crop_option = click.option(
    "--crop", type=click.Choice(SETTING["crop"].choices), default=None,
    help="Check that the model was trained with this crop (the model's own crop is always used).")
model_option = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="Model file.  [default: the most recently fitted in models/]")
bootstrap_option = click.option("--bootstrap", "n_boot", type=click.IntRange(100, 100000), default=2000,
                                show_default=True, help="Bootstrap resamples for the 95% CIs.")
explain_method_option = click.option(
    "--explain-method", type=click.Choice(EXPLAIN_METHODS), default=EXPLAIN_METHODS[0], show_default=True,
    help="occlusion: any classifier, the stack too (about 50 forward passes per image and backbone); "
         "gradcam: linear heads (logreg) only, one forward pass; lesion: the lesion map of a model with a "
         "lesion head (probability of lesion in the lungs, share of lung involved).")
site_option = click.option(
    "--site", default=None, metavar="NAME|batch",
    help="For a model fit with --harmonize: whose feature statistics standardize these images. NAME: a "
         "site the model knows (a training source or --adapt-to folder); batch: these images' own (no "
         "labels used; 20 or more images).  [default: an image's own source if known, else the model's "
         "one --adapt-to site, else batch]")
def engine_options(what: str):
    """--engine, --workers, --gpus-per-worker, --ray-address, handed to the command as one
    ``engine`` (EngineSettings). ``what``: what the workers do, for the help."""
    def decorate(command):
        @functools.wraps(command)
        def with_engine(*args, engine, workers, gpus_per_worker, ray_address, **kwargs):
            return command(*args, engine=EngineSettings(engine, workers, gpus_per_worker or 0.0, ray_address),
                           **kwargs)
        options = [
            click.option("--engine", type=click.Choice(ENGINES), default=LOCAL, show_default=True,
                         help=f"ray: {what} on a Ray cluster (pip install -e \".[ray]\"); the same results as "
                              "local. Images and weights must be readable at the same paths on every node."),
            click.option("--workers", type=click.IntRange(1), default=None,
                         help="With --engine ray: CNN actors (extraction) or parallel fits (tuning).  "
                              "[default: one per GPU share with --gpus-per-worker, else 1 actor; all CPUs for fits]"),
            click.option("--gpus-per-worker", type=click.FloatRange(0, min_open=True), default=None,
                         help="With --engine ray: GPUs each CNN actor reserves (fractions share one GPU)."),
            click.option("--ray-address", default=None, metavar="ADDRESS",
                         help="With --engine ray: an existing cluster (auto, ray://head:10001).  "
                              "[default: start a local Ray for this command]"),
        ]
        for option in reversed(options):
            with_engine = option(with_engine)
        return with_engine
    return decorate


offline_option = click.option("--offline", is_flag=True, default=None,
                              help="Never download weights (also: COVIDCT_OFFLINE=1).")
runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default=lambda: default_runtime(), show_default="onnxruntime, "
    "tensorflow where an NVIDIA GPU is visible, or $COVIDCT_RUNTIME",
    help="What runs the CNN: onnxruntime (on the CPU, about 2x TensorFlow's speed there), tensorflow (keras itself, "
         "also on a GPU) or openvino (pip install -e \".[openvino]\"); the same features to 1e-4; the model is "
         "exported to ONNX once and cached under the features folder.")


def model_options(engine: str | None = None):
    """The options of every command that loads a saved model: --model, --features-dir,
    --weights (where the model's weights are now), --batch-size, --offline, and with ``engine``
    (what its workers do) the engine options. The command gets ``model_path`` and ``context``."""
    def decorate(command):
        @functools.wraps(command)
        def with_model(*args, features_dir, weights, batch_size, offline, runtime, engine=None, **kwargs):
            return command(*args, context=_context(features_dir, batch_size, offline, weights, engine, runtime),
                           **kwargs)
        options = [model_option, features_option, model_weights_option, batch_option, offline_option, runtime_option]
        for option in reversed(options):
            with_model = option(with_model)
        return engine_options(engine)(with_model) if engine else with_model
    return decorate


EXTRACTING = "feature extraction of images not cached: decoding in tasks, the CNN in an actor pool"
error_rate_option = click.option(
    "--error-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="A",
    help="The answers' error rate: COVID or NonCOVID only where each class is missed at most this share of the "
         "time (conformal, on the model's calibration images); else uncertain.  [default: the model's, 0.1 unless "
         "fit said otherwise]")
lesion_data_option = click.option(
    "--lesion-data", "lesion_data", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of slices with radiologists' masks (manifest.csv: path, patient, infected, infection_mask, "
         "lung_mask) or slice labels (slices.csv: path, patient, infection). Repeatable.")


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
    from feature_extractor.weights import backbones_listing

    click.echo(backbones_listing())


@main.command()
@click.option("--backbone", "-b", "backbone_names", multiple=True,
              help="Backbone name (see `backbones`). Repeatable. Needed unless only --lesion-data is checked.")
@data_option
@weights_option
@features_option
@batch_option
@feature_settings(select=False)
@offline_option
@runtime_option
@lesion_data_option
@engine_options("decoding in tasks, the CNN in an actor pool")
def extract(backbone_names, data, weights, features_dir, batch_size, offline, runtime, lesion_data, engine,
            **settings) -> None:
    """Extract CNN features of every image of a dataset into the feature cache.

    Images already cached (same bytes, same backbone, weights and settings) are not run
    again. Each setting (--pooling, --tta, --precision, --crop, --window) has its own cache.
    --lesion-data: check lesion data (every mask against its slice) before fit trains a lesion
    head on it; their dense features are not cached (fit computes them; see README, "Lesions").
    """
    from feature_extractor.extract import DatasetExtraction
    from feature_extractor.feature_spec import specs_from_options

    if lesion_data:
        from feature_extractor.lesion_data import check_masks, load_lesion_data

        lesions = load_lesion_data(lesion_data)
        check_masks(lesions)
        d = lesions.describe()
        click.echo(f"lesion data: {d['n_slices']} slices of {d['patients']} patients ({d['n_infected']} infected, "
                   f"{d['n_with_masks']} with infection masks, {d['n_with_lung_masks']} with lung masks): every mask fits "
                   "its slice")
        for note in lesions.notes:
            click.secho(f"  note: {note}", fg="yellow", err=True)
        if not backbone_names:
            return
    if not backbone_names:
        raise click.UsageError("Missing option '--backbone' / '-b'.")

    run = DatasetExtraction(data, specs_from_options(backbone_names, weights, **settings),
                            _context(features_dir, batch_size, offline, engine=engine, runtime=runtime))
    click.echo(run.summary())
    any_failed = False
    for report in run:
        click.echo(report.summary())
        for warning in report.warnings():
            click.secho(f"  warning: {warning}", fg="yellow", err=True)
        _report_failures(report.crop_fallbacks, limit=5)
        _report_failures(report.failed)
        any_failed = any_failed or bool(report.failed)
    if any_failed:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.option("--clf", type=click.Choice([*CLASSIFIERS, STACK]), required=True,
              help="Classifier; stack = every backbone x every --base classifier, with a logistic "
                   "meta-learner on their out-of-fold probabilities.")
@click.option("--base", default=",".join(DEFAULT_BASE), show_default=True, metavar="CLF,CLF,...",
              help=f"Base classifiers of the stack ({', '.join(CLASSIFIERS)}).")
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
@click.option("--balance", type=click.Choice(BALANCES), default=None,
              help="Sample weights: source = every source and both classes inside it weigh the same, so "
                   "'which source' carries no label; class = both classes weigh the same; none.  "
                   "[default: source with several --data, else class]")
@click.option("--harmonize", type=click.Choice(HARMONIZATIONS), default="none", show_default=True,
              help="standardize: each site's features centered and scaled by that site's own mean and sd "
                   "before the classifier (training sources, --adapt-to folders, and at predict time "
                   "--site).")
@click.option("--adapt-to", "adapt_to", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of unlabeled images of a site the model will be used on: its feature statistics "
                   "are learned (with --harmonize) and recorded. Repeatable.")
@feature_settings(select=True)
@lesion_data_option
@click.option("--lesion-features", is_flag=True,
              help="With --lesion-data: each image's lesion summaries (share of lung involved, highest and mean "
                   "probability, left and right shares, peripheral share) join its image features.")
@click.option("--lesion-backbone", default=None, metavar="NAME",
              help="With --lesion-data: which of the model's backbones gives the dense features.  "
                   "[default: the first with hypercolumn layers]")
@click.option("--lesion-input", type=click.IntRange(32, 2048), default=DENSE_INPUT, show_default=True,
              help="With --lesion-data: the dense features' input side in px.")
@click.option("--lesion-grid", type=click.IntRange(4, 512), default=DENSE_GRID, show_default=True,
              help="With --lesion-data: the lesion map's grid (cells a side).")
@click.option("--lesion-heads", default=",".join(LESION_HEADS), show_default=True, metavar="CLF,CLF,...",
              help="With --lesion-data: the lesion head's candidates, chosen by patient-grouped CV.")
@click.option("--error-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_ERROR_RATE,
              show_default=True, metavar="A", help="The conformal answers' default error rate, recorded in the model "
                                                   "(predict, evaluate and serve may ask for another).")
@engine_options("the grouped-CV fits of tuning (joblib's Ray backend)")
def fit(clf, base, target_sensitivity, backbone_names, data, features_dir, model_path, weights,
        cv_folds, seed, balance, harmonize, adapt_to, lesion_data, lesion_features, lesion_backbone, lesion_input,
        lesion_grid, lesion_heads, error_rate, engine, **settings) -> None:
    """Train a classifier on cached features of the training images (train+val split).

    Hyperparameters are tuned by patient-grouped, stratified CV; the test split is never read.
    With --lesion-data, a lesion head is trained on radiologists' infection masks and saved with
    the model: predict then gives each slice's share of lung involved and its lesion map.
    """
    from classifiers.workflows.features import FeatureSelection
    from classifiers.workflows.lesions import LesionSettings
    from classifiers.workflows.train import FitSettings, fit_model, fit_summary

    if weights and not backbone_names:
        raise click.BadParameter("name the backbones with --backbone when using --weights",
                                 param_hint="--weights")
    if not lesion_data:
        _refuse_together("no --lesion-data", {"--lesion-features": "lesion_features", "--lesion-backbone":
                                              "lesion_backbone", "--lesion-input": "lesion_input",
                                              "--lesion-grid": "lesion_grid", "--lesion-heads": "lesion_heads"})
    bases = tuple(b.strip() for b in base.split(",") if b.strip())
    heads = tuple(h.strip() for h in lesion_heads.split(",") if h.strip())
    bundle = fit_model(data, FitSettings(clf, bases, cv_folds, seed, target_sensitivity, balance, harmonize,
                                         lesion_features),
                       FeatureSelection.from_options(backbone_names, weights, **settings),
                       _context(features_dir, engine=engine), model_path, adapt_to, lesion_data,
                       LesionSettings(lesion_backbone, lesion_input, lesion_grid, heads=heads, seed=seed), error_rate)
    _finish(fit_summary(bundle))


@main.command()
@model_options(EXTRACTING)
@data_option
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Split to evaluate when the data has the official split (other data: all images).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where metrics.json, report.md and the plots go.  [default: reports/<model>-<split>]")
@click.option("--cv", "cv_folds", type=click.IntRange(2, 20), default=None,
              help="Also refit the model's configuration in K patient-grouped folds of train+val "
                   "and report mean +- sd.")
@click.option("--cv-by", type=click.Choice(["source"]), default=None,
              help="source: leave one source out (needs --data per source). For each source, refit the "
                   "model's configuration on the others' training images and test on all of its images.")
@bootstrap_option
@model_crop_option
@site_option
@click.option("--studies", "study_labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="LABELS.csv",
              help="Study level: --data is a folder of studies (see predict --studies) and LABELS.csv has columns "
                   "study,label (study: the folder name predict --studies writes, or the StudyInstanceUID).")
@click.option("--max-slices", type=click.IntRange(1), default=None,
              help="With --studies: score at most N slices per study, evenly spaced within the lungs.")
@lesion_data_option
@error_rate_option
def evaluate(model_path, context, data, split, report_dir, cv_folds, cv_by, n_boot, crop, site, study_labels,
             max_slices, lesion_data, error_rate) -> None:
    """Metrics with 95% CIs of a model on held-out labeled images, with plots and a report.

    Default: the official test split. With --data pointing at another labeled folder
    (COVID/ and NonCOVID/) or CSV manifest: all of its images (an external check). With
    --lesion-data: the model's lesion head against radiologists' masks and slice labels.
    """
    if lesion_data:
        _refuse_together("--lesion-data", {"--data": "data", "--split": "split", "--cv": "cv_folds",
                                           "--cv-by": "cv_by", "--studies": "study_labels", "--site": "site"})
        from classifiers.workflows.lesion_evaluate import evaluate_lesions, write_lesion_evaluation
        from classifiers.workflows.model import load_model

        model = load_model(model_path, context)
        evaluation = evaluate_lesions(model, lesion_data)
        out = write_lesion_evaluation(evaluation, report_dir or Path("reports") / f"{model.path.stem}-lesions")
        _finish([evaluation.table(), f"wrote {out}"], evaluation.failures)
        return
    if cv_by:
        _refuse_together("--cv-by source", {"--split": "split", "--cv": "cv_folds", "--site": "site",
                                             "--studies": "study_labels"})
    if study_labels:
        _refuse_together("--studies", {"--crop": "crop", "--split": "split", "--cv": "cv_folds"})
        from classifiers.workflows.study_evaluate import evaluate_studies

        if len(data) != 1:
            raise click.BadParameter("--studies evaluates one folder of studies", param_hint="--data")
        evaluation, out_dir = evaluate_studies(data[0], study_labels, model_path, context, report_dir, n_boot, site,
                                               max_slices, error_rate=error_rate)
        _finish([evaluation.table(), f"wrote metrics.json, studies.csv and slices.csv in {out_dir}/"],
                evaluation.predictions.failures)
        return
    if max_slices:
        raise click.UsageError("--max-slices needs --studies")
    from classifiers.workflows.evaluate import evaluate_and_write

    report, files = evaluate_and_write(data, model_path, split, context, report_dir, n_boot, cv_folds, crop, cv_by,
                                       site, error_rate)
    plots = len(files) - 2
    _finish([report.header(), report.table(),
             f"wrote {files['metrics']}, {files['report']} and {plots} plot{'s' * (plots > 1)} in "
             f"{files['metrics'].parent}/"], report.errors)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options(EXTRACTING)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv",
              show_default=True, help=f"CSV with columns {record.SLICE.help_line()} (one row per file; "
                                      "--studies: one per slice, and studies.csv beside it).")
@click.option("--explain", is_flag=True,
              help="Also write one PNG per image: the slice with a heatmap of the regions that "
                   "raised P(COVID). Occlusion runs 50 variants per image through each backbone: "
                   "1.3 s per image for one MobileNetV2 on 2 CPU cores.")
@click.option("--explain-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the heatmap PNGs go.  [default: heatmaps/ beside --out]")
@explain_method_option
@click.option("--lesion-maps", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="A model with a lesion head: write each image's <stem>_lesion.png (pixel = probability of lesion "
                   "x 255) and <stem>_lungs.png at the image's size into DIR (in the image's subfolder).")
@model_crop_option
@site_option
@click.option("--studies", is_flag=True,
              help="One answer per study: DICOM files grouped by study and series (the axial CT series "
                   "used, slices ordered by position), a folder of PNG/JPEG slices is one study; slices "
                   "outside the lungs skipped; slice probabilities pooled as the model chose at fit. "
                   "Writes studies.csv beside --out, which then lists the slices.")
@click.option("--max-slices", type=click.IntRange(1), default=None,
              help="With --studies: score at most N slices per study, evenly spaced within the lungs.")
@click.option("--keep-identifiers", is_flag=True,
              help="With --studies: write study/series UIDs and file names as they are. Default: patient "
                   "name, ID and birth date from the headers are removed from every output.")
@error_rate_option
def predict(folder, model_path, context, out, explain, explain_dir, explain_method, lesion_maps, crop, site, studies,
            max_slices, keep_identifiers, error_rate) -> None:
    """Predict COVID probabilities for every image under FOLDER (recursively).

    Exit code 3 when some files could not be read: they still get a row, with the reason
    in the `error` column.
    """
    if studies:
        _refuse_together("--studies", {"--crop": "crop", "--explain": "explain", "--explain-dir": "explain_dir",
                                       "--lesion-maps": "lesion_maps"})
        from classifiers.workflows.studies import predict_studies_and_write

        report = predict_studies_and_write(folder, out, None, model_path, context, None, site, max_slices,
                                           keep_identifiers, error_rate)
        _finish(report.summary(), report.failures)
        return
    if max_slices or keep_identifiers:
        raise click.BadParameter("--max-slices and --keep-identifiers need --studies", param_hint="--studies")
    from classifiers.workflows.predict import predict_and_write

    report = predict_and_write(folder, out, model_path, context, crop, explain_method if explain else None,
                               explain_dir, site, lesion_maps, error_rate)
    _finish(report.summary(), report.failures)


@main.command()
@model_options()
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Labeled images of one site (COVID/ and NonCOVID/ folders or a CSV manifest): a small "
                   "sample is enough (e.g. 25 patients).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The new model.  [default: <model>-<site>.joblib beside --model]")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS), default="sigmoid", show_default=True,
              help="sigmoid (Platt; fine with 10-100 labels) or isotonic (hundreds).")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Threshold reaching this COVID recall on the sample.  [default: balanced errors]")
def calibrate(model_path, context, data, out, method, target_sensitivity) -> None:
    """Recalibrate a model for a new site on a few of its labeled images: its probabilities and
    threshold are refit, its features and classifier stay as they are. Writes a new model."""
    from classifiers.workflows.calibrate import calibrate_model, calibrate_summary

    _finish(calibrate_summary(calibrate_model(model_path, data, out, method, target_sensitivity, context)))


@main.command()
@model_options(EXTRACTING)
@data_option
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Split to report when the data has the official split.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="report.html",
              show_default=True, help="The HTML file (self-contained: images and script inline).")
@click.option("--heatmaps", type=click.IntRange(0), default=50, show_default=True,
              help="Explain the first N rows of the table (misclassified first); 0: none. On 2 CPU "
                   "cores: 1.3 s per image for one MobileNetV2, 2.9 s for a 3-backbone stack.")
@click.option("--cv-by", type=click.Choice(["source"]), default=None,
              help="source: leave one source out (needs --data per source); each image is scored by the "
                   "model refit without its source. No heatmaps then.")
@explain_method_option
@bootstrap_option
@click.option("--studies", is_flag=True,
              help="--data is a folder of studies (see predict --studies): each study with its answer and a "
                   "strip of its 3 top-scoring slices with heatmaps (--heatmaps 0: without).")
@error_rate_option
def report(model_path, context, data, split, out, heatmaps, cv_by, explain_method, n_boot, studies,
           error_rate) -> None:
    """One self-contained HTML report: model card, metrics with CIs, plots, and every image
    with its thumbnail, heatmap and prediction (misclassified first).

    --data: labeled data (as for evaluate) gives metrics; a plain folder of slices gives
    predictions only.
    """
    if cv_by:
        _refuse_together("--cv-by source", {"--split": "split", "--studies": "studies", "--heatmaps": "heatmaps"})
    if studies:
        from classifiers.workflows.studies import study_report_to_html

        if len(data) != 1:
            raise click.BadParameter("--studies reports one folder of studies", param_hint="--data")
        result, path = study_report_to_html(data[0], out, model_path, context, explain_method=explain_method,
                                            heatmaps=heatmaps > 0, error_rate=error_rate)
        _finish([f"wrote {path}: {len(result.results)} studies"])
        return
    from classifiers.workflows.report import report_to_html

    path, content = report_to_html(data, out, model_path, context, split, heatmaps, explain_method, n_boot, cv_by,
                                   error_rate)
    _finish([content.summary(path)], content.failures)


@main.command()
@model_options()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token-file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding the bearer token every API call must send (Authorization: Bearer ...).")
@click.option("--max-request-mb", type=click.FloatRange(0, min_open=True), default=200.0, show_default=True,
              help="Largest upload per request; bigger ones get 413.")
@click.option("--max-files", type=click.IntRange(1), default=1000, show_default=True,
              help="Most files per request, zip members included.")
@click.option("--keep-identifiers", is_flag=True,
              help="Patient identifiers from DICOM headers in responses (default: removed).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Dynamic batching: at most this many new slices of concurrent requests in one CNN batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=10.0, show_default=True,
              help="Dynamic batching: how long the first new slice waits for others to join its batch.")
@explain_method_option
@error_rate_option
def serve(model_path, context, host, port, token_file, max_request_mb, max_files, keep_identifiers,
          max_batch, batch_wait_ms, explain_method, error_rate) -> None:
    """A web page and a JSON API for one model: upload slices or a zipped DICOM study.

    The model is loaded once (with its integrity check); requests queue for the CNN; seen images
    come from the cache. Research use only.
    """
    from service.server import serve as run_server
    from service.settings import ServeSettings

    settings = ServeSettings(host, port, ServeSettings.read_token(token_file), max_request_mb, max_files,
                             keep_identifiers=keep_identifiers, heatmap_method=explain_method, error_rate=error_rate,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    if keep_identifiers:
        click.secho("warning: --keep-identifiers: responses carry patient identifiers from DICOM headers",
                    fg="yellow", err=True)
    click.echo(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    run_server(model_path, context, settings)


if __name__ == "__main__":
    main()
