"""What fit prints: the model card of the model it saved, in a few lines (data, features, CV scores,
the answer policy's thresholds, the segmentation network, the files written)."""
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
        lines += segmentation_lines(c.lesion)
    choice = c.threshold_choice
    if choice["rule"] != "default":
        lines.append(f"threshold {choice['threshold']:.3f} (out-of-fold sensitivity "
                     f"{choice['oof_sensitivity']:.3f}, specificity {choice['oof_specificity']:.3f})")
    lines.append(f"saved {path} and {path.with_suffix('.json')}")
    return lines


def segmentation_lines(lesion: dict) -> list[str]:
    """The segmentation network's lines: what it was trained on, and its out-of-fold maps per source."""
    s, d = lesion["segmenter"], lesion["data"]
    cut = f"lesion cut-off {s['lesion_threshold']:.2f}"
    if s.get("cut_off") == "member":  # older cards: one pooled cut-off
        cuts = ", ".join(str(round(v["threshold"], 2)) for v in s["validation"])
        cut = f"lesion cut-offs {cuts} (each decoder's own)"
    lines = [f"lungs and lesion network: {s['members']} decoders on {lesion['maps']['backbone']}'s maps, trained on "
             f"{d['n_with_masks']} slices ({d['patients']} patients; {d['n_with_lung_masks']} with lung masks) in "
             f"{s['training_seconds'] / 60:.1f} min, {cut}"]
    for source, a in lesion.get("out_of_fold", {}).items():
        parts = [f"lesion Dice {a['lesion_dice']:.3f}" if a["lesion_dice"] is not None else None,
                 f"lung Dice {a['lung_dice']:.3f}" if a["lung_dice"] is not None else None,
                 f"{a['lesion_inside_lungs']:.0%} of the lesion inside the lungs"
                 if a["lesion_inside_lungs"] is not None else None]
        lines.append(f"  out of fold on {source} ({a['slices']} slices): " + ", ".join(p for p in parts if p))
    return lines
