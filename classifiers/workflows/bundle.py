"""A fitted model on disk: the joblib file plus a JSON manifest (its model card) beside it.

The joblib file holds the fitted parts: the classifier, the site harmonizer, the
out-of-distribution detector, the answer policy's parts (thresholds, source test, finding) and the
lungs and lesion segmentation network's decoders, and after calibrate the site's model. The manifest
(model_card.py) says what made them and holds the SHA-256 of the joblib file. joblib files
are pickles and loading one runs code, so the hash is checked before anything is unpickled:
load only models you trust.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from covidct_core.errors import ModelBundleError
from covidct_core.provenance import sha256_file

from ..estimators.harmonize import NoHarmonization
from ..records.model_card import MANIFEST_FORMAT, ModelCard

DEFAULT_MODELS_DIR = Path("models")
PARTS = ("estimator", "harmonizer", "ood", "thresholds", "study_thresholds", "source_test", "finding", "segmenter",
         "site_model")


def manifest_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


@dataclass
class ModelBundle:
    """A model's fitted parts, its card and its path. ``harmonizer``: per-site feature
    standardization (estimators/harmonize.py; NoHarmonization when the model has none);
    ``ood``: the out-of-distribution detector or None; ``thresholds`` and ``study_thresholds``:
    the answers' Learn-then-Test thresholds of slices (per training source) and of studies
    (estimators/risk_control.py); ``source_test``: the two-sample test of sets of images
    (estimators/source_test.py); ``finding``: the lesion finding's thresholds; ``segmenter``: the
    lungs and lesion segmentation network's trained decoders (estimators/segmenter.py); ``site_model``:
    what calibrate learned of a site (estimators/site_model.py). Parts a model lacks are None
    (workflows/answer_policy.py says what is then not given)."""

    estimator: Any
    card: ModelCard
    path: Path
    harmonizer: Any = dataclasses.field(default_factory=NoHarmonization)
    ood: Any = None
    thresholds: Any = None
    study_thresholds: Any = None
    source_test: Any = None
    finding: Any = None
    segmenter: Any = None
    site_model: Any = None

    def __post_init__(self) -> None:
        if self.harmonizer is None:  # models of formats 2 and 3 saved None
            self.harmonizer = NoHarmonization()

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def parts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARTS}


def save_bundle(bundle: ModelBundle) -> ModelBundle:
    """Write the model and its manifest (the card, with the model file's name and SHA-256);
    each lands complete or not at all (temp + rename). Returns the bundle as written."""
    model_path = Path(bundle.path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_path.with_name(model_path.name + ".tmp")
    joblib.dump(bundle.parts(), tmp_model)
    card = bundle.card.with_changes(model_file=model_path.name, model_sha256=sha256_file(tmp_model),
                                    format_version=MANIFEST_FORMAT)
    tmp_manifest = manifest_path(model_path).with_name(manifest_path(model_path).name + ".tmp")
    tmp_manifest.write_text(json.dumps(card.to_manifest(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp_model, model_path)
    os.replace(tmp_manifest, manifest_path(model_path))
    return dataclasses.replace(bundle, card=card, path=model_path)


def read_card(model_path: str | Path) -> ModelCard:
    """The model card of the model at ``model_path`` (its manifest, read and upgraded)."""
    path = manifest_path(model_path)
    if not Path(model_path).is_file():
        raise ModelBundleError(f"model file not found: {model_path}")
    if not path.is_file():
        raise ModelBundleError(f"model manifest not found: {path} (it must sit beside {model_path})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelBundleError(f"cannot read model manifest {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelBundleError(f"cannot read model manifest {path}: not a JSON object")
    return ModelCard.from_manifest(manifest, str(model_path))


def load_bundle(model_path: str | Path) -> ModelBundle:
    """Load a model after checking its file against the manifest's SHA-256."""
    model_path = Path(model_path)
    card = read_card(model_path)
    actual = sha256_file(model_path)
    if actual != card.model_sha256:
        raise ModelBundleError(
            f"refusing to load {model_path}: its SHA-256 ({actual[:16]}...) does not match the "
            f"manifest ({card.model_sha256[:16]}...). The file was changed or "
            "replaced; model files are pickles and loading one runs code.")
    parts = joblib.load(model_path)
    if card.format_version == 2:  # the joblib file was the estimator alone
        parts = {"estimator": parts}
    bundle = ModelBundle(card=card, path=model_path, **{k: parts.get(k) for k in PARTS})
    if bundle.segmenter is None:  # the finding reads the segmentation network's maps (format 5: a lesion head's)
        bundle.finding = None
    return bundle


def latest_model(models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """The most recently fitted model (by manifest time) in ``models_dir``."""
    folder = Path(models_dir)
    manifests = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    models = [p.with_suffix(".joblib") for p in manifests if p.with_suffix(".joblib").is_file()]
    if not models:
        raise ModelBundleError(f"no fitted model in {folder}/; run `python cli.py fit` first "
                               "or pass --model PATH")
    return models[-1]
