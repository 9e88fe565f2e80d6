"""The study HTML page: each study's answer, every field of the study record (prediction_record.STUDY,
so a new field shows here as in studies.csv), and a strip of its top-scoring slices with the
heatmap of what raised P(COVID) and their lesion maps. One self-contained file (images inline),
nothing fetched from the network; names and paths already redacted by the caller."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct_core.provenance import utc_now

from ..records import prediction_record as record

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
.ruo{background:#fff3cd;border:1px solid #e0c36c;padding:.4em .8em;margin:.5em 0}
.study{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.covid{color:#a40000;font-weight:600}.noncovid{color:#05640b;font-weight:600}
.neutral{color:#444;font-weight:600;border:1px solid #999;border-radius:4px;padding:0 .3em}
.strip{display:flex;gap:.6em;flex-wrap:wrap}.strip figure{margin:0;text-align:center;font-size:.85em}
.warn{color:#8a5300} dl.fields{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:.9em}
dl.fields dt{font-weight:600} dl.fields dd{margin:0}
"""
# Shown in the heading or by the strip, not in the list of fields.
_SHOWN_ON_THE_CARD = ("study", "answer", "top_slices", "top_lesion_slices")


@dataclass
class StudyStrip:
    """A study's result, its name as shown (redacted), and its top slices: (slice number, the
    slice's prediction row, its picture (heatmap or slice) as a data URI, its lesion map or None)."""

    result: Any                      # records.study_results.StudyResult
    name: str
    slices: list[tuple[int, Any, str | None, str | None]] = field(default_factory=list)


def _value(f: record.RecordField, value: Any) -> str:
    if f.kind is float:
        if f.name.startswith("opacity_"):
            return f"{value:.1f}%"
        share = f.name in ("lesion_burden",) or f.name.endswith(("_fraction", "_share"))
        return f"{100 * value:.1f}%" if share else f"{value:.3f}"
    if f.kind is bool:
        return "yes" if value else "no"
    if f.kind is list:
        return "; ".join(map(str, value))
    return str(value)


def render_studies(strips: list[StudyStrip], model: str, aggregation: str, threshold: float, method: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Study predictions</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>Study predictions</h1>",
             "<p class=ruo role=note><strong>Research use only.</strong> Not a diagnostic device; every "
             "result needs a radiologist's read.</p>",
             f"<p>Model <code>{e(model)}</code>; a study's P(COVID) is the {e(aggregation)} of its slices' "
             f"probabilities (chosen at fit by patient-grouped CV); threshold {threshold:g}. Heatmaps: {e(method)}. "
             f"Written {e(utc_now())}.</p>"]
    fields = [f for f in record.STUDY.api_fields() if f.name not in _SHOWN_ON_THE_CARD]
    for strip in strips:
        result = strip.result
        answer = result.answer or result.label or ""
        kind = {"COVID": "covid", "NonCOVID": "noncovid"}.get(answer, "neutral")  # never red or green otherwise
        verdict = ("<span class=error>no answer: " + e(result.error or "") + "</span>") if result.p_covid is None \
            else f"<span class={kind}>{e(answer)}</span>"
        flag = "" if result.in_distribution in (None, True) else \
            " <span class=warn>(most slices look unlike the training images)</span>"
        listing = "".join(f"<dt title='{e(f.help)}'>{e(f.name)}</dt><dd>{e(_value(f, v))}</dd>"
                          for f in fields if (v := f.value(result)) not in (None, [], ""))
        parts.append(f"<section class=study aria-label='study {e(strip.name)}'><h2>{e(strip.name)}</h2>"
                     f"<p>{verdict}{flag}</p><dl class=fields>{listing}</dl>")
        if strip.slices:
            parts.append("<div class=strip>")
            for number, row, picture, lesion in strip.slices:
                for uri, what in ((picture, "heatmap"), (lesion, "lesion map")):
                    if uri:
                        parts.append(f"<figure><img src='{uri}' alt='slice {number} with its {what}, P(COVID) "
                                     f"{row.p_covid:.2f}'><figcaption>slice {number}: {row.p_covid:.2f}"
                                     + ("" if what == "heatmap" or row.lesion_fraction is None
                                        else f", {100 * row.lesion_fraction:.0f}% of lung") + "</figcaption></figure>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_study_html(strips: list[StudyStrip], out: str | Path, model: str, aggregation: str, threshold: float,
                     method: str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_studies(strips, model, aggregation, threshold, method), encoding="utf-8")
    return out
