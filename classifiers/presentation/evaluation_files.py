"""Write an evaluation to a folder: metrics.json, report.md and the three plots."""
from __future__ import annotations

import json
from pathlib import Path

from ..records.evaluation import CrossSourceReport, EvaluationReport
from ..records.metrics import METRICS
from .plots import plot_calibration, plot_confusion, plot_risk_coverage, plot_roc, plot_roc_by_source

PLOTS = {"roc": "roc.png", "calibration": "calibration.png", "confusion": "confusion_matrix.png",
         "risk-coverage": "risk_coverage.png"}


def write_plots(report: EvaluationReport, out_dir: str | Path) -> dict[str, Path]:
    """The ROC, calibration and confusion-matrix PNGs; name (a key of PLOTS) -> file."""
    out_dir = Path(out_dir)
    title = f"{report.card.classifier} on {report.split} (n={report.n['images']})"
    auc = report.metrics["roc_auc"]
    plots = {
        "roc": plot_roc(report.y, report.p, out_dir / PLOTS["roc"], f"ROC: {title}",
                        (auc["ci_low"], auc["ci_high"]), report.threshold),
        "calibration": plot_calibration(report.y, report.p, out_dir / PLOTS["calibration"],
                                        f"Calibration: {title}"),
        "confusion": plot_confusion(report.confusion, out_dir / PLOTS["confusion"],
                                    f"threshold {report.threshold:.2f}"),
    }
    if report.risk_coverage:
        plots["risk-coverage"] = plot_risk_coverage([(report.split, report.risk_coverage)],
                                                    out_dir / PLOTS["risk-coverage"], f"Answers: {title}",
                                                    report.error_rate)
    return plots


def write_evaluation(report: EvaluationReport, out_dir: str | Path) -> dict[str, Path]:
    """metrics.json, report.md and the plots; name -> file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_plots(report, out_dir)
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(report.to_json(), indent=2, default=_json_default) + "\n")
    files["report"] = out_dir / "report.md"
    files["report"].write_text(markdown(report), encoding="utf-8")
    return files


def write_cross_source(report: CrossSourceReport, out_dir: str | Path) -> dict[str, Path]:
    """Leave-one-source-out results: metrics.json, report.md and one ROC plot with a curve per
    held-out source; name -> file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = [(h.source, h.y, h.p, tuple(h.metrics["roc_auc"][k] for k in ("value", "ci_low", "ci_high")))
              for h in report.held_out]
    files = {"roc": plot_roc_by_source(curves, out_dir / "roc_by_source.png",
                                       f"Leave one source out: {report.card.classifier}")}
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(report.to_json(), indent=2, default=_json_default) + "\n")
    files["report"] = out_dir / "report.md"
    card = report.card
    lines = [f"# Leave one source out: {card.classifier}", "",
             "_Research use only, not for clinical diagnosis._", "",
             f"- configuration of `{report.model_path}` (sha256 {card.model_sha256[:16]}), "
             f"refit without each source in turn: {json.dumps(card.to_manifest()['fit'])}, balance {card.balance}",
             "- features: " + ", ".join(spec.summary() for spec in card.specs),
             f"- data: `{report.data}`; every labeled image of the held-out source is scored",
             f"- CIs: 95% percentile bootstrap, {report.bootstrap['n']} resamples of patients", "",
             "| held out | images | trained on (images) | AUC (95% CI) | accuracy | sensitivity | specificity |",
             "|---|---|---|---|---|---|---|"]
    for h in report.held_out:
        m = h.metrics
        lines.append(f"| {h.source} | {h.n['images']} | {'+'.join(h.train_sources)} ({h.n_train}) | "
                     f"{m['roc_auc']['value']:.3f} ({m['roc_auc']['ci_low']:.3f} - {m['roc_auc']['ci_high']:.3f}) | "
                     f"{m['accuracy']['value']:.3f} | {m['sensitivity']['value']:.3f} | {m['specificity']['value']:.3f} |")
    lines += ["", "![ROC by held-out source](roc_by_source.png)", ""]
    files["report"].write_text("\n".join(lines), encoding="utf-8")
    return files


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def markdown(report: EvaluationReport) -> str:
    card = report.card
    backbones = ", ".join(spec.summary() for spec in card.specs)
    training = card.training
    n = report.n
    lines = [
        f"# Evaluation: {card.classifier} on {report.split}",
        "",
        "_Research use only, not for clinical diagnosis._",
        "",
        f"- model: `{report.model_path}` (sha256 {card.model_sha256[:16]}, fitted {card.created})",
        f"- features: {backbones}",
        f"- trained on: {training.n_images} images, splits {'+'.join(training.splits)} "
        f"of `{'; '.join(training.data)}`",
        f"- evaluated on: `{report.data}` ({report.layout}), split **{report.split}**: {n['images']} images "
        f"({n['COVID']} COVID, {n['NonCOVID']} NonCOVID"
        + (f", {n['patients']} patients" if n.get("patients") else "") + ")",
        f"- data fingerprint: `{report.data_fingerprint[:16]}`; threshold {report.threshold:.3f}",
        f"- CIs: 95% percentile bootstrap, {report.bootstrap['n']} resamples of "
        f"{report.bootstrap['unit']}s",
        "",
        *(f"- {line.strip()}" for line in report.answers_lines()),
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for name in METRICS:
        v = report.metrics[name]
        lines.append(f"| {name} | {v['value']:.3f} | {v['ci_low']:.3f} - {v['ci_high']:.3f} |")
    (tn, fp), (fn, tp) = report.confusion
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | NonCOVID | COVID |", "|---|---|---|",
              f"| NonCOVID | {tn} | {fp} |", f"| COVID | {fn} | {tp} |"]
    if report.patient_level:
        lines += ["", "Patient level (a patient's score is the mean or max of its slices):", "",
                  "| aggregation | accuracy | sensitivity | specificity | AUC (95% CI) |", "|---|---|---|---|---|"]
        for how, pm in report.patient_level.items():
            lines.append(f"| {how} | {pm['accuracy']['value']:.3f} | {pm['sensitivity']['value']:.3f} | "
                         f"{pm['specificity']['value']:.3f} | {pm['roc_auc']['value']:.3f} "
                         f"({pm['roc_auc']['ci_low']:.3f} - {pm['roc_auc']['ci_high']:.3f}) |")
    if report.by_source:
        lines += ["", "By source:", "", "| source | images | accuracy | AUC (95% CI) |", "|---|---|---|---|"]
        for source, part in report.by_source.items():
            acc, auc = part["metrics"]["accuracy"], part["metrics"]["roc_auc"]
            lines.append(f"| {source} | {part['n']['images']} | {acc['value']:.3f} | {auc['value']:.3f} "
                         f"({auc['ci_low']:.3f} - {auc['ci_high']:.3f}) |")
    if report.cv:
        lines += ["", f"{report.cv['n_folds']}-fold patient-grouped CV on {'+'.join(report.cv['splits'])} "
                  "(model configuration refit per fold):", "", "| metric | mean | sd |", "|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.3f} | {v['sd']:.3f} |" for k, v in report.cv["metrics"].items()]
    if report.errors:
        lines += ["", f"{len(report.errors)} images could not be read and are not counted."]
    lines += ["", "![ROC](roc.png) ![Calibration](calibration.png) ![Confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)
