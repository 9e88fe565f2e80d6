"""What fit prints: the model card of the model it saved, in a few lines (data, features, CV scores,
the answer policy's thresholds, the lesion and lung heads, the files written)."""
from __future__ import annotations

from pathlib import Path

from ..estimators.registry import STACK
from ..records.model_card import ModelCard


def answers_summary(card: ModelCard) -> list[str]:
    """The answer policy's lines of fit's summary: thresholds, study thresholds, source test, finding."""
    a = card.answers
    if not a:
        return ["answers: none (a model fitted before the answer policy: refit it)"]

    def pair(t) -> str:
        return "(" + ", ".join("none" if v is None else f"{v:.3f}" for v in t) + ")"
    slices = a["slices"]["groups"]
    lines = [f"answers at error rate {card.error_rate:g} with confidence {a['confidence']:g} (Learn-then-Test), "
             "NonCOVID/COVID thresholds: " + ", ".join(f"{g} {pair(v['thresholds_at_default_rate'])}"
                                                      for g, v in slices.items())]
    studies = a["studies"]
    lines.append("  studies: " + (studies if isinstance(studies, str) else
                                  f"{pair(studies['groups']['all']['thresholds_at_default_rate'])} on "
                                  f"{sum(studies['groups']['all']['n'].values())} training patients with several slices"))
    lines.append(f"  source test: sets of {a['source_test']['min_set']} or more images against "
                 f"{', '.join(a['source_test']['sources'])} (two-sample MMD)")
    f = a.get("finding")
    if f:
        got = f.get("thresholds") or {}
        lines.append(f"  finding: {f.get('missing') or 'clear/opacities thresholds ' + pair(got.get('thresholds_at_default_rate', (None, None)))} "
                     f"on {f['n_slices']} lesion slices' out-of-fold {f.get('score', 'lesion_fraction')}"
                     + (f" (AUC {f['oof_auc']:.3f})" if f.get("oof_auc") is not None else ""))
    return lines


def fit_summary(c: ModelCard, path: Path) -> list[str]:
    """What fit reports of the model it saved at ``path``: data, features, CV scores, threshold and the
    files written."""
    t = c.training
    lines = [f"trained {c.classifier} on {t.n_images} images ({t.n_covid} COVID, "
             f"{t.n_noncovid} NonCOVID, {t.n_groups} {t.grouping} groups; splits: {'+'.join(t.splits)})"]
    if len(t.sources) > 1:
        lines += [f"  source {s['name']}: {s['n_images']} images ({s['n_covid']} COVID, {s['n_noncovid']} "
                  f"NonCOVID; {'+'.join(s['splits'])})" for s in t.sources]
    lines.append(f"features: {' + '.join(b['backbone'] for b in c.backbones)} ({c.feature_dim} dims, "
                 f"crop {c.backbones[0]['crop']})")
    for b in c.cv.get("base_models", []):
        lines.append(f"  base {b['block']:<14} {b['classifier']:<8} CV AUC {b['cv_auc']:.3f} "
                     f"+- {b['cv_auc_std']:.3f}  meta weight {b['meta_weight']:+.2f}")
    params = "" if c.classifier == STACK else f" with {dict(c.params)}"
    weighted = ", source-balanced weights" if c.balance == "source" else ""
    lines.append(f"CV AUC {c.cv_auc:.3f} +- {c.cv['auc_std']:.3f}{params}{weighted}")
    if c.harmonization.sites:
        lines.append("features standardized per site: " + ", ".join(
            f"{s['name']} ({s['role']}, {s['n_images']} images)" for s in c.harmonization.sites))
    lines.append(f"out-of-distribution cut-off {c.ood['cut_off']:.4f} ({c.ood['cut_off_rule']})")
    lines += answers_summary(c)
    if c.lesion:
        h = c.lesion["head"]
        lines.append(f"lesion head: {h['classifier']} on {c.lesion['training_cells']['n']} lung cells of "
                     f"{c.lesion['data']['n_with_masks']} slices ({c.lesion['data']['patients']} patients), out-of-fold "
                     f"cell Dice {h['cv_cell_dice']:.3f} at probability {h['threshold']:.2f}")
        lung = c.lesion.get("lung_head") or {}
        lines.append(f"lung head: {lung['head']['classifier']} on {lung['training_cells']['n']} cells of "
                     f"{lung['n_slices']} slices ({lung['patients']} patients) with radiologists' lung masks, "
                     f"out-of-fold cell Dice {lung['head']['cv_cell_dice']:.3f}" if "head" in lung else
                     f"lung head: none ({lung.get('missing', 'a model fitted before lung heads')})")
    choice = c.threshold_choice
    if choice["rule"] != "default":
        lines.append(f"threshold {choice['threshold']:.3f} (out-of-fold sensitivity "
                     f"{choice['oof_sensitivity']:.3f}, specificity {choice['oof_specificity']:.3f})")
    lines.append(f"saved {path} and {path.with_suffix('.json')}")
    return lines
