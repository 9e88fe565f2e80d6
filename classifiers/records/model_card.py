"""The model card: a fitted model's manifest, read in one place and typed.

The manifest (``<model>.json`` beside the joblib file) says what made a model: each
backbone's FeatureSpec record, the classifier and its settings, the training data and its
fingerprints, the CV scores, the threshold, the site harmonization, the out-of-distribution
detector, the study aggregation, the answer policy (thresholds, source test, finding), the lungs
and lesion segmentation network, the site a model was calibrated on, the library
versions and the SHA-256 of the model file. Every command reads it through
:meth:`ModelCard.from_manifest`, which upgrades older formats first (the way FeatureSpec reads
older caches), so no reader needs its own defaults for a key an old model lacks.

Formats: 6 (since 2026-12-07: the segmentation network in place of format 5's lesion and lung heads,
which are not read: a format-5 model gives no lesion evidence until refit, and one whose classifier
read lesion summaries is refused with its fit command); 5 (since 2026-12-05: Learn-then-Test answers,
the source test, the finding; format 4's
conformal calibration is not read: its models give no answers until refit); 4 (since 2026-11-30:
conformal calibration, lesion head, default error rate);
3 (the joblib file holds the estimator, the site harmonizer and the OOD detector); 2 (the joblib
file is the estimator alone; no harmonization, detector or study aggregation). Format 1
(before FeatureSpec records) is refused with the fit command that made it.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from covidct_core.errors import ModelBundleError
from feature_extractor.feature_spec import FeatureSpec

from ..estimators.options import DEFAULT_AGGREGATION, DEFAULT_ERROR_RATE
from ..settings import FitSettings
from .lesion_summary import CLASSIFIER_SUMMARY

MANIFEST_FORMAT = 6
READABLE_FORMATS = (2, 3, 4, 5, 6)


@dataclass(frozen=True)
class TrainingData:
    """What the model was trained on (no paths of images, no patient ids)."""

    data: tuple[str, ...] = ()
    layout: str = ""
    splits: tuple[str, ...] = ()
    n_images: int = 0
    n_covid: int = 0
    n_noncovid: int = 0
    n_groups: int = 0
    grouping: str = "image"
    fingerprint: str = ""
    sources: tuple[dict, ...] = ()   # per source: name, n_images, n_covid, n_noncovid, splits, fingerprint

    def source_fingerprints(self) -> dict[str, str]:
        """fingerprint -> source name, for every training source and for the whole."""
        known = {s["fingerprint"]: s["name"] for s in self.sources}
        known.setdefault(self.fingerprint, "its training data")
        return known


@dataclass(frozen=True)
class Harmonization:
    method: str = "none"
    sites: tuple[dict, ...] = ()   # name, role (training, adapt-to, calibrate), n_images, fingerprint

    def site_names(self, role: str) -> list[str]:
        return [s["name"] for s in self.sites if s["role"] == role]


@dataclass(frozen=True)
class ModelCard:
    """Every key of a manifest, typed. ``to_manifest`` writes it back (format MANIFEST_FORMAT)."""

    classifier: str
    fit: FitSettings                # as given to fit (its balance None: chosen by the data; see ``balance``)
    backbones: tuple[dict, ...]     # FeatureSpec records plus feature_dim and cache_file
    feature_dim: int
    training: TrainingData
    threshold: float = 0.5
    threshold_choice: Mapping[str, Any] = field(default_factory=lambda: {"threshold": 0.5, "rule": "default"})
    balance: str = "class"
    harmonization: Harmonization = Harmonization()
    ood: Mapping[str, Any] | None = None
    study_aggregation: Mapping[str, Any] = field(default_factory=lambda: {"method": DEFAULT_AGGREGATION})
    params: Mapping[str, Any] = field(default_factory=dict)
    estimator: Mapping[str, Any] | None = None    # the fitted estimator's class and get_params() (estimator_record)
    cv: Mapping[str, Any] = field(default_factory=dict)
    engine: Mapping[str, Any] = field(default_factory=lambda: {"engine": "local"})
    answers: Mapping[str, Any] | None = None     # the answer policy's record (thresholds, source test, finding)
    lesion: Mapping[str, Any] | None = None      # the segmentation network's record (workflows/lesions/training.py)
    error_rate: float = DEFAULT_ERROR_RATE
    calibration: Mapping[str, Any] | None = None  # set by calibrate: where the model came from
    created: str = ""
    command: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None
    model_file: str = ""
    model_sha256: str = ""
    format_version: int = MANIFEST_FORMAT

    # -- derived ---------------------------------------------------------------------------
    @property
    def specs(self) -> list[FeatureSpec]:
        """Each backbone's FeatureSpec, in the order of the feature columns."""
        return [FeatureSpec.from_record(b) for b in self.backbones]

    @property
    def blocks(self) -> list[tuple[str, int, int]]:
        """(backbone, start, stop) columns of each backbone's features, and of the lesion
        summaries when the classifier reads them (the stack's blocks)."""
        return feature_blocks(self.backbones, self.fit.lesion_features)

    @property
    def lesion_columns(self) -> tuple[str, ...]:
        """The lesion summaries joined after the image features (none without --lesion-features)."""
        return tuple(self.lesion.get("classifier_features", ())) if self.fit.lesion_features and self.lesion else ()

    @property
    def refit_settings(self) -> FitSettings:
        """The fit settings that reproduce this model's training (the balance it used)."""
        return dataclasses.replace(self.fit, balance=self.balance)

    @property
    def aggregation(self) -> str:
        return str(self.study_aggregation.get("method", DEFAULT_AGGREGATION))

    @property
    def cv_auc(self) -> float:
        return float(self.cv.get("auc", float("nan")))

    def public_backbones(self) -> list[dict]:
        """The backbone records without local paths (for reports and the API)."""
        return [{k: v for k, v in b.items() if k != "weights_path"} for b in self.backbones]

    def with_changes(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)

    # -- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "the model") -> "ModelCard":
        """The card of a manifest of any readable format (older ones upgraded first)."""
        version = manifest.get("format_version")
        if version not in READABLE_FORMATS:
            older = isinstance(version, int) and version < min(READABLE_FORMATS)
            raise ModelBundleError(
                f"{where} has model format {version!r}; this version reads formats "
                f"{', '.join(map(str, READABLE_FORMATS[:-1]))} and {READABLE_FORMATS[-1]}. "
                + (f"Refit it (its features are still cached): {_refit_command(manifest)}" if older
                   else "Use the covidct version that wrote it."))
        m = _upgrade(copy.deepcopy(dict(manifest)))
        t = m["training"]
        h = m["harmonization"]
        try:
            return cls(
                classifier=str(m["classifier"]),
                fit=FitSettings.from_record(m["fit"]),
                backbones=tuple(m["backbones"]),
                feature_dim=int(m["feature_dim"]),
                training=TrainingData(
                    tuple(t.get("data", ())), t.get("layout", ""), tuple(t.get("splits", ())),
                    int(t.get("n_images", 0)), int(t.get("n_covid", 0)), int(t.get("n_noncovid", 0)),
                    int(t.get("n_groups", 0)), t.get("grouping", "image"), t.get("fingerprint", ""),
                    tuple(t.get("sources", ()))),
                threshold=float(m["threshold"]),
                threshold_choice=m["threshold_choice"],
                balance=str(m["balance"]),
                harmonization=Harmonization(h.get("method", "none"), tuple(h.get("sites", ()))),
                ood=m.get("ood"),
                study_aggregation=m["study_aggregation"],
                params=m.get("params", {}),
                estimator=m.get("estimator"),
                cv=m.get("cv", {}),
                engine=m.get("engine", {"engine": "local"}),
                answers=m.get("answers"),
                lesion=m.get("lesion"),
                error_rate=float(m["error_rate"]),
                calibration=m.get("calibration"),
                created=m.get("created", ""),
                command=m.get("command", ""),
                versions=m.get("versions", {}),
                warning=m.get("warning"),
                model_file=m.get("model_file", ""),
                model_sha256=m.get("model_sha256", ""),
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelBundleError(f"{where}: its manifest is incomplete or damaged ({exc!r})") from None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest as JSON values, in the current format."""
        t = self.training
        out = {
            "created": self.created, "command": self.command, "classifier": self.classifier,
            "params": dict(self.params), "estimator": self.estimator, "fit": self.fit.record(),
            "engine": dict(self.engine), "threshold": self.threshold, "threshold_choice": dict(self.threshold_choice),
            "balance": self.balance,
            "harmonization": {"method": self.harmonization.method, "sites": list(self.harmonization.sites)},
            "ood": self.ood, "study_aggregation": dict(self.study_aggregation), "answers": self.answers,
            "error_rate": self.error_rate, "lesion": self.lesion,
            "backbones": list(self.backbones), "feature_dim": self.feature_dim,
            "training": {"data": list(t.data), "layout": t.layout, "splits": list(t.splits), "n_images": t.n_images,
                         "n_covid": t.n_covid, "n_noncovid": t.n_noncovid, "n_groups": t.n_groups,
                         "grouping": t.grouping, "fingerprint": t.fingerprint, "sources": list(t.sources)},
            "cv": dict(self.cv), "versions": dict(self.versions),
        }
        if self.calibration is not None:
            out["calibration"] = dict(self.calibration)
        if self.warning:
            out["warning"] = self.warning
        out.update({"format_version": MANIFEST_FORMAT, "model_file": self.model_file,
                    "model_sha256": self.model_sha256})
        return out


def estimator_record(estimator: Any) -> dict[str, Any]:
    """A fitted estimator's class and its ``get_params()`` as JSON values (nested estimators by
    class name, with their own parameters under ``<name>__``)."""
    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if hasattr(value, "get_params"):
            return type(value).__name__
        if hasattr(value, "item"):
            return value.item()
        return repr(value)
    params = estimator.get_params(deep=True) if hasattr(estimator, "get_params") else {}
    return {"class": f"{type(estimator).__module__}.{type(estimator).__name__}",
            "params": {k: plain(v) for k, v in sorted(params.items())}}


LESION_BLOCK = "lesion"


def feature_blocks(backbones: Sequence[Mapping[str, Any]], lesion: bool = False) -> list[tuple[str, int, int]]:
    """(backbone, start, stop) columns of each backbone's features, from manifest entries; with
    ``lesion``, the lesion summaries' block after them."""
    out, start = [], 0
    for b in backbones:
        stop = start + int(b["feature_dim"])
        out.append((b["backbone"], start, stop))
        start = stop
    if lesion:
        out.append((LESION_BLOCK, start, start + len(CLASSIFIER_SUMMARY)))
    return out


def _upgrade(m: dict) -> dict:
    """A manifest of an older readable format brought to the current one, step by step."""
    if m["format_version"] == 2:  # before harmonization, the OOD detector and study aggregation
        m.setdefault("harmonization", {"method": "none", "sites": []})
        m.setdefault("ood", None)
        m.setdefault("study_aggregation", {"method": DEFAULT_AGGREGATION})
        m["fit"] = {"harmonize": "none", **m.get("fit", {})}
        m["format_version"] = 3
    if m["format_version"] == 3:  # before conformal answers and the lesion head
        m.setdefault("lesion", None)
        m.setdefault("error_rate", DEFAULT_ERROR_RATE)
        m["format_version"] = 4
    if m["format_version"] == 4:  # conformal answers, replaced by the answer policy: refit to get answers
        m.pop("conformal", None)
        m.setdefault("answers", None)
        m["format_version"] = 5
    if m["format_version"] == 5:  # the lesion and lung heads, replaced by the segmentation network
        if m.get("lesion") and m.get("fit", {}).get("lesion_features"):
            raise ModelBundleError("this model's classifier reads lesion summaries of the lesion head that this "
                                   "version replaced by the segmentation network; refit it (its features are still "
                                   f"cached): {_refit_command(m)}")
        m["lesion"] = None
        if m.get("answers"):
            m["answers"].pop("finding", None)
        m["format_version"] = 6
    m.setdefault("threshold", 0.5)
    m.setdefault("threshold_choice", {"threshold": m["threshold"], "rule": "default"})
    m.setdefault("balance", m.get("fit", {}).get("balance") or "class")
    return m


def _refit_command(manifest: Mapping[str, Any]) -> str:
    command = str(manifest.get("command") or "python cli.py fit ...")
    first = (command.split() or [""])[0]
    return f"python {command}" if first.endswith(".py") else command
