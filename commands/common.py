"""What every command shares: exit codes, the progress bar, the summary and failure lines, and the
options several commands take (the data, the feature cache, a saved model, the engine)."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from classifiers.records.explanation import METHODS as EXPLAIN_METHODS
from classifiers.settings import AnswerSettings
from covidct_core.run_context import RunContext
from covidct_core.run_settings import EngineSettings
from covidct_core.settings_schema import schema, settings_options
from feature_extractor.feature_spec import SETTING, SETTINGS

EXIT_ERROR, EXIT_PARTIAL = 1, 3
DEFAULT_DATA = "data/COVID-CT"


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


def run_context(features_dir: Path, batch_size: int = RunContext.batch_size, offline: bool | None = None,
                weights: tuple[str, ...] = (), engine: EngineSettings | None = None,
                runtime: str | None = None) -> RunContext:
    return RunContext(features_dir, batch_size, offline, weights, progress_bar, engine or EngineSettings(), runtime)


def report_failures(failed: dict[str, str], limit: int = 10) -> None:
    for path, reason in list(failed.items())[:limit]:
        click.echo(f"  {path}: {reason}", err=True)
    if len(failed) > limit:
        click.echo(f"  ... and {len(failed) - limit} more", err=True)


def finish(lines=(), failures: dict[str, str] | None = None) -> None:
    """Print a command's summary lines; list the files that could not be used and exit 3 when
    there are any (the command still wrote everything else)."""
    for line in lines:
        click.echo(line)
    if failures:
        report_failures(failures)
        sys.exit(EXIT_PARTIAL)


def given(name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


def refuse_together(option: str, others: dict[str, str]) -> None:
    """One line when options that ``option`` makes meaningless (``--flag``: its parameter's
    name) were given with it."""
    flags = [flag for flag, name in others.items() if given(name)]
    if flags:
        raise click.UsageError(f"{', '.join(flags)} cannot be used with {option}: "
                               f"{'it is' if len(flags) == 1 else 'they are'} ignored there")


def feature_settings(select: bool):
    """The FeatureSpec settings as options (feature_extractor/feature_spec.py SETTINGS): with
    their defaults on extract; as filters (default: any) when ``select``."""
    def decorate(command):
        for s in reversed(SETTINGS):
            option = s.click_option(None, f"Use features of this {s.name} when several are cached.", required=False) if select \
                else s.click_option()
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
batch_option, offline_option, runtime_option = (s.click_option() for s in schema(RunContext))
model_crop_option = click.option(
    "--crop", type=click.Choice(SETTING["crop"].valid_choices()), default=None,
    help="Check that the model was trained with this crop (the model's own crop is always used).")
bootstrap_option = click.option("--bootstrap", "n_boot", type=click.IntRange(100, 100000), default=2000,
                                show_default=True, help="Bootstrap resamples for the 95% CIs.")
site_option = click.option(
    "--site", default=None, metavar="NAME|batch",
    help="For a model fit with --harmonize: whose feature statistics standardize these images. NAME: a "
         "site the model knows (a training source or --adapt-to folder); batch: these images' own (no "
         "labels used; 20 or more images).  [default: an image's own source if known, else the model's "
         "one --adapt-to site, else batch]")
lesion_data_option = click.option(
    "--lesion-data", "lesion_data", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of slices with radiologists' masks (manifest.csv: path, patient, infected, infection_mask, "
         "lung_mask) or slice labels (slices.csv: path, patient, infection). Repeatable.")


explain_method_option = click.option(
    "--explain-method", type=click.Choice(EXPLAIN_METHODS), default=EXPLAIN_METHODS[0], show_default=True,
    help="occlusion: any classifier, the stack too (about 50 forward passes per image and backbone); "
         "gradcam: linear heads (logreg) only, one forward pass; lesion: the lesion map of a model with a "
         "segmentation network (probability of lesion in the lungs, share of lung involved).")


def engine_options(command):
    """--engine, --workers, --gpus-per-worker, --ray-address (EngineSettings), handed to the command as one
    ``engine``."""
    return settings_options(EngineSettings, "engine")(command)


def model_options(engine: bool = False, load: bool = True):
    """The options of every command that uses a saved model: --model, --features-dir, --weights
    (where the model's weights are now), --batch-size, --offline, --runtime, the answer settings
    (--error-rate), and with ``engine`` the engine options. The command gets
    ``model``, the model loaded once (hash-checked); with ``load`` False it gets ``model_path``,
    ``context`` and ``answers`` to load it itself after its own checks."""
    def decorate(command):
        @functools.wraps(command)
        def with_model(*args, model_path, features_dir, weights, batch_size, offline, runtime, answers,
                       engine=None, **kwargs):
            context = run_context(features_dir, batch_size, offline, weights, engine, runtime)
            if not load:
                return command(*args, model_path=model_path, context=context, answers=answers, **kwargs)
            from classifiers.workflows.model import load_model

            return command(*args, model=load_model(model_path, context, answers), **kwargs)
        options = [
            click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                         help="Model file.  [default: the most recently fitted in models/]"),
            features_option,
            click.option("--weights", "weights", multiple=True, metavar="NAME=FILE|imagenet",
                         help="Where to find the weights the model was trained with, when not where they were "
                              "(checked by SHA-256). Default: the model's own. Repeatable."),
            batch_option, offline_option, runtime_option,
        ]
        for option in reversed(options):
            with_model = option(with_model)
        with_model = settings_options(AnswerSettings, "answers")(with_model)
        return engine_options(with_model) if engine else with_model
    return decorate
