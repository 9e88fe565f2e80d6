"""A fitted model on disk: the joblib file plus a JSON manifest beside it.

The manifest says what made the model (each backbone's FeatureSpec record, feature dims,
classifier and params, training data fingerprint, CV score, library versions) and holds the
SHA-256 of the joblib file. joblib files are pickles and loading one runs code, so the hash
is checked before anything is unpickled: load only models you trust.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from feature_extractor.errors import ModelBundleError
from feature_extractor.provenance import sha256_file

MANIFEST_FORMAT = 3  # 3: the joblib file holds the estimator and its site harmonizer and OOD detector
READABLE_FORMATS = (2, 3)  # 2: the joblib file is the estimator alone
# 1: before FeatureSpec records and the estimator registry (refit those)
DEFAULT_MODELS_DIR = Path("models")


def manifest_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


@dataclass
class ModelBundle:
    """``harmonizer``: per-site feature standardization (estimators/harmonize.py) or None;
    ``ood``: the out-of-distribution detector (estimators/ood.py) or None."""

    estimator: Any
    manifest: dict
    path: Path
    harmonizer: Any = None
    ood: Any = None

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))


def save_bundle(estimator: Any, manifest: dict, model_path: str | Path, harmonizer: Any = None,
                ood: Any = None) -> ModelBundle:
    """Write the model and its manifest; each lands complete or not at all (temp + rename)."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_path.with_name(model_path.name + ".tmp")
    joblib.dump({"estimator": estimator, "harmonizer": harmonizer, "ood": ood}, tmp_model)
    manifest = {**manifest, "format_version": MANIFEST_FORMAT, "model_file": model_path.name,
                "model_sha256": sha256_file(tmp_model)}
    tmp_manifest = manifest_path(model_path).with_name(manifest_path(model_path).name + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp_model, model_path)
    os.replace(tmp_manifest, manifest_path(model_path))
    return ModelBundle(estimator, manifest, model_path, harmonizer, ood)


def read_manifest(model_path: str | Path) -> dict:
    path = manifest_path(model_path)
    if not Path(model_path).is_file():
        raise ModelBundleError(f"model file not found: {model_path}")
    if not path.is_file():
        raise ModelBundleError(f"model manifest not found: {path} (it must sit beside {model_path})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelBundleError(f"cannot read model manifest {path}: {exc}") from None
    version = manifest.get("format_version")
    if version not in READABLE_FORMATS:
        older = isinstance(version, int) and version < min(READABLE_FORMATS)
        raise ModelBundleError(
            f"{model_path} has model format {version!r}; this version reads formats "
            f"{' and '.join(map(str, READABLE_FORMATS))}. "
            + (f"Refit it (its features are still cached): {_refit_command(manifest)}" if older
               else "Use the covidct version that wrote it."))
    return manifest


def _refit_command(manifest: dict) -> str:
    command = str(manifest.get("command") or "python cli.py fit ...")
    first = (command.split() or [""])[0]
    return f"python {command}" if first.endswith(".py") else command


def load_bundle(model_path: str | Path) -> ModelBundle:
    """Load a model after checking its file against the manifest's SHA-256."""
    model_path = Path(model_path)
    manifest = read_manifest(model_path)
    actual = sha256_file(model_path)
    if actual != manifest.get("model_sha256"):
        raise ModelBundleError(
            f"refusing to load {model_path}: its SHA-256 ({actual[:16]}...) does not match the "
            f"manifest ({str(manifest.get('model_sha256'))[:16]}...). The file was changed or "
            "replaced; model files are pickles and loading one runs code.")
    parts = joblib.load(model_path)
    if manifest["format_version"] == 2:
        parts = {"estimator": parts}
    return ModelBundle(parts["estimator"], manifest, model_path, parts.get("harmonizer"), parts.get("ood"))


def latest_model(models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """The most recently fitted model (by manifest time) in ``models_dir``."""
    folder = Path(models_dir)
    manifests = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    models = [p.with_suffix(".joblib") for p in manifests if p.with_suffix(".joblib").is_file()]
    if not models:
        raise ModelBundleError(f"no fitted model in {folder}/; run `python cli.py fit` first "
                               "or pass --model PATH")
    return models[-1]
