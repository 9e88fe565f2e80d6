"""evaluate --lesion-data: how a model's lungs and lesion maps agree with radiologists.

Per folder of lesion data (feature_extractor/segmentation/lesion_data.py):
- pixel Dice of the lesion (the segmentation network's, inside its lungs) against the infection masks,
  pooled over slices and per patient;
- its lungs against the radiologists' lung masks: pooled Dice, and how many slices with lung (>= 1% of
  the image) got none;
- slice AUC of the share of lung involved against the slice labels, among slices whose lungs
  fill at least 10% of the image; beside it the AUC of the lung's share alone, because how much
  lung a slice shows (its position) predicts infection on its own;
- within each patient (a whole study), the same slice AUC: what the source cannot explain;
- Spearman correlation of the predicted and the expert share of lung involved.
The labels are only read here, to score; nothing is chosen on them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError, ModelBundleError
from covidct_core.provenance import utc_now
from feature_extractor.segmentation.lesion_data import LesionSlice, check_masks, load_lesion_data, slice_masks

from ..model import LoadedModel
from ...records.lesion_summary import SliceSegmentation

MIN_LUNG_SHARE = 0.10   # slices for the slice AUC: lungs fill at least this share of the image
MIN_LUNG_MASKED = 0.01  # a slice "with lung" for the count of missing lung masks


@dataclass
class SliceScore:
    """One slice's agreement with the radiologists (None where they gave no such mask or label)."""

    source: str
    group: str
    infected: int | None
    expert_fraction: float | None   # infected share of the expert lung
    lung_share: float               # expert lung mask's share of the image, else the product's
    predicted_fraction: float | None
    lesion_inter: int | None = None
    lesion_total: int | None = None
    lung_inter: int | None = None
    lung_total: int | None = None
    lung_missing: bool | None = None
    summary: object = None          # the slice's LesionSummary (the finding reads it)


def score_slice(s: LesionSlice, m: SliceSegmentation) -> SliceScore:
    """Compare one slice's maps with its masks and labels."""
    masks = slice_masks(s, m.lungs.shape)
    score = SliceScore(s.source, s.group, s.infected, s.infection_fraction,
                       float(masks.lungs.mean()) if masks.lungs is not None else m.summary.lung_share_of_slice,
                       m.summary.lesion_fraction)
    if masks.infection is not None:
        lesion = m.lesion
        score.lesion_inter, score.lesion_total = int((lesion & masks.infection).sum()), \
            int(lesion.sum() + masks.infection.sum())
    if masks.lungs is not None:
        score.lung_inter, score.lung_total = int((m.lungs & masks.lungs).sum()), int(m.lungs.sum() + masks.lungs.sum())
        score.lung_missing = bool(masks.lungs.mean() >= MIN_LUNG_MASKED and not m.lungs.any())
        if s.infection_fraction is None and masks.infection is not None and masks.lungs.any():
            score.expert_fraction = float((masks.infection & masks.lungs).sum() / masks.lungs.sum())
    return score


def _dice(scores: Sequence[SliceScore], inter: str, total: str) -> float | None:
    parts = [(getattr(s, inter), getattr(s, total)) for s in scores if getattr(s, total) is not None]
    t = sum(b for _, b in parts)
    return None if not parts or t == 0 else 2 * sum(a for a, _ in parts) / t


def _auc(y: Sequence[int], score: Sequence[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def agreement(scores: Sequence[SliceScore]) -> dict:
    """The metrics of the module docstring for one set of slices."""
    from scipy.stats import spearmanr

    labeled = [s for s in scores if s.infected is not None and s.predicted_fraction is not None]
    lungs = [s for s in labeled if s.lung_share >= MIN_LUNG_SHARE]
    out = {"n_slices": len(scores), "n_infected": sum(s.infected == 1 for s in scores),
           "pixel_dice": _dice(scores, "lesion_inter", "lesion_total"),
           "pixel_dice_by_patient": {g: _dice([s for s in scores if s.group == g], "lesion_inter", "lesion_total")
                                     for g in dict.fromkeys(s.group for s in scores if s.lesion_total is not None)},
           "lung_dice": _dice(scores, "lung_inter", "lung_total"),
           "lung_slices_without_mask": sum(bool(s.lung_missing) for s in scores),
           "lung_slices": sum(s.lung_total is not None and s.lung_share >= MIN_LUNG_MASKED for s in scores),
           "slice_auc": _auc([s.infected for s in lungs], [s.predicted_fraction for s in lungs]),
           "slice_auc_lung_share_only": _auc([s.infected for s in lungs], [s.lung_share for s in lungs]),
           "n_slice_auc": len(lungs)}
    within = {}
    for g in dict.fromkeys(s.group for s in labeled):
        mine = [s for s in labeled if s.group == g and s.lung_share >= MIN_LUNG_SHARE]
        auc = _auc([s.infected for s in mine], [s.predicted_fraction for s in mine])
        if auc is not None:
            within[g] = {"auc": auc, "auc_lung_share_only": _auc([s.infected for s in mine], [s.lung_share for s in mine]),
                         "n": len(mine), "n_infected": sum(s.infected == 1 for s in mine)}
    out["within_patient"] = within
    paired = [s for s in scores if s.expert_fraction is not None and s.predicted_fraction is not None]
    out["spearman_fraction"] = float(spearmanr([s.expert_fraction for s in paired],
                                               [s.predicted_fraction for s in paired]).correlation) \
        if len(paired) > 2 else None
    return out


@dataclass
class LesionEvaluation:
    model_path: Path
    by_source: dict[str, dict]
    failures: dict[str, str]
    data: dict
    error_rate: float = 0.1

    def table(self) -> str:
        def f(v) -> str:
            return "-" if v is None else f"{v:.3f}"
        lines = [f"{'lesion data':<20} {'slices':>6} {'pixel Dice':>10} {'lung Dice':>9} {'slice AUC':>9} "
                 f"{'lung only':>9} {'Spearman':>8}"]
        for source, m in self.by_source.items():
            lines.append(f"{source:<20} {m['n_slices']:>6} {f(m['pixel_dice']):>10} {f(m['lung_dice']):>9} "
                         f"{f(m['slice_auc']):>9} {f(m['slice_auc_lung_share_only']):>9} {f(m['spearman_fraction']):>8}")
            f_rate = m.get("finding", {}).get(str(self.error_rate))
            if f_rate:
                lines.append(f"  finding at error rate {self.error_rate:g}: coverage {f_rate['coverage']:.0%}, error among "
                             f"answered {f_rate['error']:.3f} ({f_rate['n']} labelled slices)")
            for g, w in m["within_patient"].items():
                lines.append(f"  within {g}: slice AUC {w['auc']:.3f} (lung share alone {f(w['auc_lung_share_only'])}, "
                             f"{w['n']} slices, {w['n_infected']} infected)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"created": utc_now(), "model": str(self.model_path), "lesion_data": self.data,
                "min_lung_share_for_slice_auc": MIN_LUNG_SHARE, "by_source": self.by_source,
                "unreadable": self.failures}


def evaluate_lesions(model: LoadedModel, folders: Sequence[str | Path]) -> LesionEvaluation:
    """The lungs and lesion maps of ``model`` against the radiologists' masks and labels in ``folders``."""
    if model.lesions is None:
        raise ModelBundleError(f"--lesion-data: {model.path} has no segmentation network; fit it with --lesion-data "
                               "DIR")
    data = load_lesion_data(folders)
    check_masks(data)
    scores, failures = [], {}
    for s, (_, segmentation) in zip(data.slices, model.lesions.segment_slices([s.path for s in data.slices],
                                                                              "lesion check  ")):
        if isinstance(segmentation, str):
            failures[s.path] = segmentation
            continue
        scores.append(score_slice(s, segmentation))
        scores[-1].summary = segmentation.summary
    if not scores:
        raise CovidCTError(f"none of the {len(data.slices)} lesion slices could be read")
    by_source = {src: agreement([s for s in scores if s.source == src]) for src in data.sources}
    for src, part in by_source.items():
        part["finding"] = finding_agreement(model, [s for s in scores if s.source == src])
    return LesionEvaluation(model.path, by_source, failures, data.describe(), model.error_rate)


FINDING_RATES = (0.05, 0.1, 0.2)


def finding_agreement(model: LoadedModel, scores: Sequence[SliceScore]) -> dict:
    """The finding against the slice labels, at each of FINDING_RATES and the model's error rate: its
    coverage (opacities or clear), error among those, coverage of infected and of clean slices."""
    from dataclasses import replace

    from ..answer_policy import CLEAR, OPACITIES, findings

    labeled = [s for s in scores if s.infected is not None]
    if model.answer_parts.finding is None or not labeled:
        return {}
    y = np.array([s.infected for s in labeled])
    out = {}
    for rate in sorted({*FINDING_RATES, model.error_rate}):
        got = np.array(findings(replace(model.answer_parts, error_rate=rate), [s.summary for s in labeled]))
        answered = np.isin(got, (OPACITIES, CLEAR))
        wrong = answered & ((got == OPACITIES) != (y == 1))
        out[str(rate)] = {"n": len(y), "coverage": float(answered.mean()),
                          "error": float(wrong.sum() / answered.sum()) if answered.any() else float("nan"),
                          "coverage_infected": float(answered[y == 1].mean()) if (y == 1).any() else float("nan"),
                          "coverage_clean": float(answered[y == 0].mean()) if (y == 0).any() else float("nan")}
    return out


def write_lesion_evaluation(evaluation: LesionEvaluation, out_dir: str | Path) -> Path:
    out = Path(out_dir) / "lesions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    return out

