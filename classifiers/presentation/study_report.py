"""The study HTML page: each study as its answer and a strip of its top-scoring slices, each
with the heatmap of what raised P(COVID). One self-contained file (images inline), nothing
fetched from the network; names and paths already redacted by the caller."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from feature_extractor.provenance import utc_now

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
.ruo{background:#fff3cd;border:1px solid #e0c36c;padding:.4em .8em;margin:.5em 0}
.study{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.covid{color:#a40000;font-weight:600}.noncovid{color:#05640b;font-weight:600}
.neutral{color:#444;font-weight:600;border:1px solid #999;border-radius:4px;padding:0 .3em}
.strip{display:flex;gap:.6em;flex-wrap:wrap}.strip figure{margin:0;text-align:center;font-size:.85em}
.warn{color:#8a5300}
"""


@dataclass
class StudyCard:
    name: str
    series: str
    n_slices: int
    n_used: int
    p_covid: float | None
    label: str | None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    strip: list[tuple[int, float, str]] = field(default_factory=list)  # (slice number, p, data URI)
    in_distribution: bool | None = None
    answer: str | None = None
    lesion_burden: float | None = None


def render_studies(cards: list[StudyCard], model: str, aggregation: str, threshold: float, method: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Study predictions</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>Study predictions</h1>",
             "<p class=ruo role=note><strong>Research use only.</strong> Not a diagnostic device; every "
             "result needs a radiologist's read.</p>",
             f"<p>Model <code>{e(model)}</code>; a study's P(COVID) is the {e(aggregation)} of its slices' "
             f"probabilities (chosen at fit by patient-grouped CV); threshold {threshold:g}. Heatmaps: {e(method)}. "
             f"Written {e(utc_now())}.</p>"]
    for card in cards:
        answer = card.answer or card.label or ""
        kind = {"COVID": "covid", "NonCOVID": "noncovid"}.get(answer, "neutral")  # never red or green otherwise
        verdict = ("<span class=error>no answer: " + e(card.error or "") + "</span>") if card.p_covid is None else (
            f"<span class={kind}>{e(answer)}</span> P(COVID) {card.p_covid:.3f}"
            + ("" if card.lesion_burden is None else f"; lesion burden {100 * card.lesion_burden:.1f}% of the lung"))
        flag = "" if card.in_distribution in (None, True) else \
            " <span class=warn>(most slices look unlike the training images)</span>"
        parts.append(f"<section class=study aria-label='study {e(card.name)}'><h2>{e(card.name)}</h2>"
                     f"<p>{verdict}{flag}</p><p>{e(card.series)}; {card.n_used} of {card.n_slices} slices scored "
                     "(the others lie outside the lungs or were not sampled)</p>")
        for warning in card.warnings:
            parts.append(f"<p class=warn>warning: {e(warning)}</p>")
        if card.strip:
            parts.append("<div class=strip>")
            for number, p, uri in card.strip:
                parts.append(f"<figure><img src='{uri}' alt='slice {number} with heatmap, P(COVID) {p:.2f}'>"
                             f"<figcaption>slice {number}: {p:.2f}</figcaption></figure>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_study_html(cards: list[StudyCard], out: str | Path, model: str, aggregation: str, threshold: float,
                     method: str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_studies(cards, model, aggregation, threshold, method), encoding="utf-8")
    return out
