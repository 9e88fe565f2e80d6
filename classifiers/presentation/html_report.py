"""The HTML report: one self-contained file a clinician can open, read and sort.

It holds a model card (training data, split, backbones and weights hashes, classifier,
threshold, versions), the metrics with 95% CIs, ROC/calibration/confusion plots, and a
table of every image: thumbnail, heatmap, P(COVID), prediction, truth. Misclassified cases
come first, the most confident mistakes on top. Every image is inline (data: URIs) and the
few lines of script that sort the table are too, so the file works offline and can be
mailed or archived as is.

With unlabeled data (a folder of slices) the report has no metrics: predictions only.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


from feature_extractor.imaging.dataset import printable_path
from covidct_core.provenance import utc_now

from ..records import prediction_record as record
from ..records.evaluation import CrossSourceReport, EvaluationReport
from ..records.metrics import METRICS
from ..records.model_card import ModelCard
from ..records.prediction_record import PredictionRow
from .evaluation_files import write_cross_source, write_plots

DISCLAIMER = "Research use only, not for clinical diagnosis."


@dataclass
class CaseRow:
    """One image of the report: its prediction (the slice record) and what the report adds."""

    prediction: PredictionRow
    truth: str | None = None
    patient: str | None = None
    thumbnail: str | None = None   # data: URI
    heatmap: str | None = None     # data: URI
    note: str | None = None        # e.g. no lungs found for the crop, the held-out source
    lesion_overlay: str | None = None  # data: URI: the lesion map over the slice (models with a segmentation network)
    involved: str | None = None        # "12.3% of lung involved"

    @property
    def path(self) -> str:
        return self.prediction.path

    @property
    def p_covid(self) -> float | None:
        return self.prediction.p_covid

    @property
    def predicted(self) -> str | None:
        return self.prediction.label

    @property
    def in_distribution(self) -> bool | None:
        return self.prediction.in_distribution

    @property
    def error(self) -> str | None:
        return self.prediction.error

    @property
    def misclassified(self) -> bool:
        return self.truth is not None and self.predicted is not None and self.truth != self.predicted


@dataclass
class ReportContent:
    card: ModelCard
    model_path: Path
    data: str
    threshold: float
    rows: list[CaseRow]
    evaluation: EvaluationReport | None = None
    plots: dict[str, str] = field(default_factory=dict)   # name -> data: URI
    explain_method: str | None = None
    cross_source: CrossSourceReport | None = None         # report --cv-by source
    notes: list[str] = field(default_factory=list)        # why all of a source's answers are uncertain

    @property
    def failures(self) -> dict[str, str]:
        return {r.path: r.error for r in self.rows if r.error}

    def summary(self, path: Path) -> str:
        n_wrong = sum(r.misclassified for r in self.rows)
        n_heat = sum(1 for r in self.rows if r.heatmap)
        n_ood = sum(r.in_distribution is False for r in self.rows)
        return (f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(self.rows)} images, "
                f"{n_wrong} misclassified, {n_heat} heatmaps, {n_ood} out of distribution")


def order_rows(rows: list[CaseRow], threshold: float) -> list[CaseRow]:
    """Misclassified first (most confident mistakes on top), then the rest by P(COVID),
    unreadable files last."""
    def key(row: CaseRow):
        if row.p_covid is None:
            return (2, 0.0)
        if row.misclassified:
            return (0, -abs(row.p_covid - threshold))
        return (1, -row.p_covid)
    return sorted(rows, key=key)


def plot_uris(evaluation: EvaluationReport | None = None,
              cross_source: CrossSourceReport | None = None) -> dict[str, str]:
    """The plots of an evaluation, or of a leave-one-source-out run, as data: URIs (name -> URI)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_plots(evaluation, tmp) if evaluation is not None else \
            {"roc by held-out source": write_cross_source(cross_source, tmp)["roc"]}
        return {name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
                for name, path in files.items()}


# -- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1320px;
 padding:0 18px 40px;color:#1d2430;line-height:1.4}
h1{font-size:1.6em;margin:18px 0 4px} h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:28px}
.disclaimer{background:#fff4e5;border:1px solid #f0a040;border-radius:6px;padding:10px 14px;font-weight:600}
.note{background:#eef4fb;border-left:4px solid #4a7fc1;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f3f6f9} td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.card{display:grid;grid-template-columns:max-content auto;gap:3px 14px} dl.card dt{font-weight:600}
dl.card dd{margin:0;word-break:break-all}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots figure{margin:0} .plots img{width:370px;border:1px solid #dde3ea}
nav a{margin-right:14px}
#cases th.sortable{cursor:pointer;user-select:none} #cases th.sortable:after{content:" \\2195";color:#99a}
#cases th[aria-sort=ascending]:after{content:" \\2191"} #cases th[aria-sort=descending]:after{content:" \\2193"}
#cases img{display:block;max-width:160px;max-height:160px}
td.pt{max-width:10em;overflow-wrap:anywhere} .warn{color:#b35c00;font-family:system-ui,sans-serif;margin-top:4px}
tr.wrong{background:#fde8e8} tr.unreadable{background:#f2f2f2;color:#666}
.tag{display:inline-block;border-radius:4px;padding:1px 6px;font-size:.85em;font-weight:600}
.tag.wrong{background:#c62828;color:#fff} .tag.ok{background:#2e7d32;color:#fff}
.answer{font-weight:700;white-space:nowrap} .answer.covid{color:#a40000} .answer.noncovid{color:#05640b}
.answer.neutral{color:#444;border:1px solid #999;border-radius:4px;padding:0 4px}
#cases{width:100%} .path{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all;
 min-width:12em;max-width:18em} .scroll{overflow-x:auto}
code{font-size:.9em}
"""

_SORT_JS = """
(function(){
  var table=document.getElementById('cases'); if(!table) return;
  var body=table.tBodies[0];
  function value(row,i,type){var c=row.cells[i]; var v=c.getAttribute('data-value');
    if(v===null) v=c.textContent.trim();
    if(type==='num'){var n=parseFloat(v); return isNaN(n)?-Infinity:n;} return v.toLowerCase();}
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    if(!th.classList.contains('sortable')) return;
    th.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending', type=th.getAttribute('data-type')||'text';
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(o){o.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){var x=value(a,i,type),y=value(b,i,type);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var only=document.getElementById('only-wrong');
  if(only) only.addEventListener('change',function(){
    Array.prototype.forEach.call(body.rows,function(r){
      r.style.display=(only.checked && !r.classList.contains('wrong'))?'none':'';});
  });
  table.setAttribute('data-sortable','ready');
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _card(card: ModelCard, model_path: Path, content: ReportContent) -> str:
    t = card.training
    cv = card.cv
    items = [
        ("model file", f"{printable_path(str(model_path))} (SHA-256 {card.model_sha256})"),
        ("fitted", f"{card.created} by <code>{_e(card.command)}</code>"),
        ("classifier", card.classifier),
        ("hyperparameters", json.dumps(dict(card.params), default=str) if card.classifier != "stack" else
         "base models " + ", ".join(card.params.get("base", []) or [])),
        ("decision threshold", f"{content.threshold:.3f} ({card.threshold_choice.get('rule', 'default')})"),
        ("training data", f"{'; '.join(t.data)} ({t.layout} layout), splits {'+'.join(t.splits)}"),
        ("sources", "; ".join(f"{x['name']}: {x['n_images']} images ({x['n_covid']} COVID, {x['n_noncovid']} "
                              f"NonCOVID), fingerprint {x['fingerprint'][:16]}" for x in t.sources)),
        ("training images", f"{t.n_images} ({t.n_covid} COVID, {t.n_noncovid} NonCOVID), "
                            f"{t.n_groups} {t.grouping} groups"),
        ("training fingerprint", t.fingerprint),
        ("cross-validation", f"{cv.get('scheme')}: AUC {card.cv_auc:.3f} ± {cv.get('auc_std', float('nan')):.3f}"),
        ("library versions", ", ".join(f"{k} {v}" for k, v in card.versions.items())),
    ]
    listing = "".join(f"<dt>{_e(k)}</dt><dd>{v if k == 'fitted' else _e(v)}</dd>" for k, v in items)
    described = [spec.describe() for spec in card.specs]
    head = "".join(f"<th>{_e(label)}</th>" for label in (described[0] if described else {}))
    backbones = "".join("<tr>" + "".join(f"<td><code>{_e(v)}</code></td>" if k == "weights SHA-256"
                                         else f"<td>{_e(v)}</td>" for k, v in d.items()) + "</tr>"
                        for d in described)
    base = cv.get("base_models", [])
    stack = ""
    if base:
        stack = ("<h3>Stacked ensemble: base models</h3><table><thead><tr><th>backbone</th><th>classifier</th>"
                 "<th>CV AUC</th><th>meta weight</th></tr></thead><tbody>" + "".join(
                     f"<tr><td>{_e(b['block'])}</td><td>{_e(b['classifier'])}</td>"
                     f"<td class=num>{b['cv_auc']:.3f} ± {b['cv_auc_std']:.3f}</td>"
                     f"<td class=num>{b['meta_weight']:+.2f}</td></tr>" for b in base) + "</tbody></table>")
    return (f"<section id=model-card><h2>Model card</h2><dl class=card>{listing}</dl>"
            f"<h3>Backbones (frozen ImageNet CNNs)</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{backbones}</tbody></table>{stack}</section>")


def _metrics(ev: EvaluationReport) -> str:
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=num>{ev.metrics[name]['value']:.3f}</td>"
                   f"<td class=num>{ev.metrics[name]['ci_low']:.3f} – {ev.metrics[name]['ci_high']:.3f}</td></tr>"
                   for name in METRICS)
    (tn, fp), (fn, tp) = ev.confusion
    n = ev.n
    patients = f", {n['patients']} patients" if n.get("patients") else ""
    out = (f"<section id=metrics><h2>Performance on {_e(ev.split)} ({n['images']} images: {n['COVID']} COVID, "
           f"{n['NonCOVID']} NonCOVID{patients})</h2>"
           + "".join(f"<p class=note>{_e(line)}</p>" for line in ev.answers_lines()) +
           f"<p>Data <code>{_e(ev.data)}</code> ({_e(ev.layout)}), fingerprint <code>{_e(ev.data_fingerprint[:16])}</code>; "
           f"threshold {ev.threshold:.3f}. 95% CIs: percentile bootstrap, {ev.bootstrap['n']} resamples of "
           f"{_e(ev.bootstrap['unit'])}s.</p>"
           "<table><thead><tr><th>metric</th><th>value</th><th>95% CI</th></tr></thead>"
           f"<tbody>{rows}</tbody></table>"
           f"<p>Confusion: TN {tn}, FP {fp}, FN {fn}, TP {tp}.</p>")
    if ev.by_source:
        out += _breakdown("source", [(src, part["metrics"], part["n"]["images"]) for src, part in ev.by_source.items()])
    if ev.patient_level:
        out += _breakdown("patient level", [(f"{how} of slices", pm, None) for how, pm in ev.patient_level.items()])
    return out + "</section>"


def _cross_source(cross: CrossSourceReport) -> str:
    rows = "".join(
        f"<tr><td>{_e(h.source)}</td><td class=num>{h.n['images']}</td><td>{_e('+'.join(h.train_sources))} "
        f"({h.n_train})</td><td class=num>{h.metrics['roc_auc']['value']:.3f} ({h.metrics['roc_auc']['ci_low']:.3f} – "
        f"{h.metrics['roc_auc']['ci_high']:.3f})</td><td class=num>{h.metrics['accuracy']['value']:.3f}</td>"
        f"<td class=num>{h.metrics['sensitivity']['value']:.3f}</td>"
        f"<td class=num>{h.metrics['specificity']['value']:.3f}</td></tr>" for h in cross.held_out)
    return ("<section id=metrics><h2>Leave one source out: how the model does on a hospital it has not seen</h2>"
            f"<p>The model's configuration ({_e(cross.card.classifier)}, balance "
            f"{_e(cross.card.balance)}) refit without each source in turn and scored on every "
            f"labeled image of that source; nothing about the held-out source reached the fit. 95% CIs: "
            f"percentile bootstrap, {cross.bootstrap['n']} resamples of patients. Each row of the table below "
            "is scored by the model that did not see its source.</p>"
            "<table><thead><tr><th>held out</th><th>images</th><th>trained on (images)</th><th>AUC (95% CI)</th>"
            f"<th>accuracy</th><th>sensitivity</th><th>specificity</th></tr></thead><tbody>{rows}</tbody></table>"
            "</section>")


def _breakdown(first: str, rows: list[tuple[str, dict, int | None]]) -> str:
    """A table of metrics per part (source, patient aggregation): accuracy, sensitivity,
    specificity, AUC with its CI; an images column when the parts have counts."""
    counted = any(n is not None for _, _, n in rows)
    head = f"<th>{_e(first)}</th>" + ("<th>images</th>" if counted else "")
    body = "".join(
        f"<tr><td>{_e(label)}</td>" + (f"<td class=num>{n}</td>" if counted else "")
        + "".join(f"<td class=num>{m[k]['value']:.3f}</td>" for k in ("accuracy", "sensitivity", "specificity"))
        + f"<td class=num>{m['roc_auc']['value']:.3f} ({m['roc_auc']['ci_low']:.3f} – {m['roc_auc']['ci_high']:.3f})"
        "</td></tr>" for label, m, n in rows)
    return (f"<table><thead><tr>{head}<th>accuracy</th><th>sensitivity</th><th>specificity</th>"
            f"<th>AUC (95% CI)</th></tr></thead><tbody>{body}</tbody></table>")


# The slice record's fields the table shows as columns (the file, its error and the heatmap
# have their own places); each column is its declaration's name, with its help as a tooltip.
_SHOWN_APART = ("path", "error", "heatmap")


def _report_fields() -> list:
    return [f for f in record.SLICE.fields if f.name not in _SHOWN_APART]


_ANSWER_CLASS = {"COVID": "covid", "NonCOVID": "noncovid"}  # uncertain, not assessable: neutral


def _field_cell(field, value) -> str:
    if field.name == "answer" and value is not None:
        return (f"<td data-value='{_e(value)}'><span class='answer {_ANSWER_CLASS.get(value, 'neutral')}'>"
                f"{_e(value)}</span></td>")
    if value is None:
        return "<td data-value=-1></td>" if field.kind in (float, int) else "<td></td>"
    if field.kind is float:
        return f"<td class=num data-value='{float(value)}'>{float(value):.3f}</td>"
    if field.kind is bool:
        return f"<td>{'yes' if value else 'no'}</td>"
    return f"<td>{_e('; '.join(value) if field.kind is list else value)}</td>"


def _case_table(content: ReportContent) -> str:
    labeled = content.evaluation is not None or content.cross_source is not None
    fields = _report_fields()
    lesions = any(r.lesion_overlay for r in content.rows)
    head = ("<th>#</th><th>slice</th><th>heatmap</th>" + ("<th>lesion map</th>" if lesions else "")
            + "<th class=sortable data-type=text>file</th>"
            + ("<th class=sortable data-type=text>patient</th><th class=sortable data-type=text>truth</th>" if labeled else "")
            + "".join(f"<th class=sortable data-type={'num' if f.kind in (float, int) else 'text'} "
                      f"title='{_e(f.help)}'>{_e(f.name)}</th>" for f in fields)
            + ("<th class=sortable data-type=num>result</th>" if labeled else ""))
    body = []
    for i, row in enumerate(content.rows, start=1):
        cls = "wrong" if row.misclassified else ("unreadable" if row.error else "")
        thumb = f"<img class=thumb alt='slice' src='{row.thumbnail}'>" if row.thumbnail else ""
        heat = f"<img class=heatmap alt='heatmap' src='{row.heatmap}'>" if row.heatmap else ""
        lesion = (f"<td><img class=lesion alt='lesion map' src='{row.lesion_overlay}'>"
                  f"<div>{_e(row.involved)}</div></td>" if row.lesion_overlay else "<td></td>") if lesions else ""
        result = ""
        if labeled and row.predicted:
            result = (f"<td data-value={0 if row.misclassified else 1}>"
                      + ("<span class='tag wrong'>misclassified</span>" if row.misclassified
                         else "<span class='tag ok'>correct</span>") + "</td>")
        elif labeled:
            result = "<td data-value=-1></td>"
        body.append(
            f"<tr class='{cls}'><td class=num>{i}</td><td>{thumb}</td><td>{heat}</td>{lesion}"
            f"<td class=path title='{_e(printable_path(row.path))}' data-value='{_e(printable_path(Path(row.path).name))}'>"
            f"{_e(printable_path(Path(row.path).name))}"
            + (f"<div class=warn>{_e(row.error or row.note)}</div>" if row.error or row.note else "")
            + ("<div class=warn>out of distribution: unlike the training images, P(COVID) unreliable</div>"
               if row.in_distribution is False else "") + "</td>"
            + (f"<td class=pt>{_e(row.patient)}</td><td>{_e(row.truth)}</td>" if labeled else "")
            + "".join(_field_cell(f, f.value(row.prediction)) for f in fields) + result
            + "</tr>")
    n_wrong = sum(r.misclassified for r in content.rows)
    n_heat = sum(1 for r in content.rows if r.heatmap)
    n_ood = sum(r.in_distribution is False for r in content.rows)
    method = {"occlusion": "occlusion sensitivity: the drop in P(COVID) when a patch is blurred out",
              "gradcam": "Grad-CAM through the frozen backbone and the linear head"}.get(content.explain_method or "")
    heat_note = (f"Heatmaps ({_e(method)}) for the first {n_heat} rows; regions that raised P(COVID) are "
                 "warm. Heatmaps on text, arrows, borders or the table mean the model uses the image source, "
                 "not the lungs." if n_heat else "No heatmaps: they explain the saved model, not the models refit "
                 "without each source." if content.cross_source else "No heatmaps were asked for (--heatmaps 0).")
    if lesions:
        heat_note += (" Lesion maps: the segmentation network's probability of lesion inside its lungs (orange; the lungs "
                      "outlined in cyan), learned from radiologists' masks: check them against the slice. A lesion "
                      "is not COVID: other pneumonias have lesions too.")
    toggle = ("<label><input type=checkbox id=only-wrong> show misclassified only</label>" if labeled else "")
    return (f"<section id=predictions><h2>Predictions ({len(content.rows)} images"
            + (f", {n_wrong} misclassified" if labeled else "")
            + (f", {n_ood} out of distribution" if any(r.in_distribution is not None for r in content.rows) else "")
            + ")</h2>"
            f"<p class=note>{heat_note} Click a column header to sort.</p>{toggle}"
            f"<div class=scroll><table id=cases><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></div></section>")


def render_html(content: ReportContent) -> str:
    c = content.card
    on = " + ".join(Path(d).name for d in content.data.split("; "))
    title = f"COVID-CT screening report: {c.classifier} on {on}"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<nav><a href='#metrics'>Performance</a><a href='#plots'>Plots</a><a href='#predictions'>Predictions</a>"
        "<a href='#model-card'>Model card</a></nav>",
        f"<p class=disclaimer id=disclaimer>{DISCLAIMER} This report describes a research model's output on "
        "the images listed; it is not a medical device and must not guide the care of a patient.</p>",
        f"<p>Generated {utc_now()} from <code>{_e(printable_path(str(content.model_path)))}</code> on "
        f"<code>{_e(content.data)}</code>.</p>",
        "<p class=note>Known trap of COVID-CT: its COVID slices come from papers (arrows, letters, varied "
        "framing), its non-COVID ones are homogeneous, so a model can learn the source instead of the "
        "disease. Check the heatmaps; a model fitted with <code>--crop lungs</code> sees the lung field only.</p>",
    ]
    if content.evaluation is not None or content.cross_source is not None:
        parts.append(_metrics(content.evaluation) if content.evaluation is not None
                     else _cross_source(content.cross_source))
        parts.append("<section id=plots><h2>Plots</h2><div class=plots>" + "".join(
            f"<figure><img alt='{name}' src='{uri}'><figcaption>{name}</figcaption></figure>"
            for name, uri in content.plots.items()) + "</div></section>")
    else:
        parts.append("<section id=metrics><h2>Performance</h2><p>Unlabeled data: no metrics, predictions "
                     "only.</p>" + "".join(f"<p class=note>note: {_e(n)}</p>" for n in content.notes) + "</section>")
    parts.append(_case_table(content))
    parts.append(_card(c, content.model_path, content))
    parts.append(f"<footer><p class=disclaimer>{DISCLAIMER}</p></footer>")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts)


def write_html(content: ReportContent, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(content), encoding="utf-8")
    tmp.replace(out)
    return out
