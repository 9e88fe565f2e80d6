"""The answer policy, in one place: which images get a COVID answer, with which thresholds, and
every image's lesion finding. predict, studies, evaluate, leave one source out, the report and the
service all call it; ``answer_note`` always names the rule that decided.

For each set of images (a folder, a source of evaluate, a study, a request's slices):

1. The source test (estimators/source_test.py): a set of 10 or more images exchangeable with a
   source the model knows is answered with that source's thresholds (and, for the site a model
   was calibrated on, that site's model); a set exchangeable with none is ``not assessable``: a
   new hospital is never answered by the image-level model unless the model was calibrated there.
   A smaller set, or a lone image, is answered with the pooled thresholds and its note says its
   source could not be checked.
2. The per-image out-of-distribution check: an image far from every training image is
   ``not assessable`` whatever its set.
3. The thresholds (estimators/risk_control.py): COVID at or above the high one, NonCOVID at or
   below the low one, ``uncertain`` between; chosen by Learn-then-Test so that the wrong share
   among answers stays under the error rate.

The finding (from the segmentation network, whose evidence transfers to new hospitals) is given
wherever the slice is CT with lungs found, even where the COVID answer is not assessable:
``opacities``, ``clear`` or ``uncertain`` by the finding's own Learn-then-Test thresholds on a slice
score of the network (the lesion's share of the lungs, or its highest probability inside them: the one
with the better out-of-fold AUC at fit), calibrated on the lesion data's slice labels (each slice
mapped by the decoder that did not see its patient).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..estimators.options import COVID, FINDINGS, NONCOVID, NOT_ASSESSABLE, UNCERTAIN
from ..estimators.risk_control import POOLED

OPACITIES, CLEAR, FINDING_UNCERTAIN, FINDING_NOT_ASSESSABLE = FINDINGS
MIN_LUNG_SHARE_OF_SLICE = 0.02   # a slice whose lungs cover less of it has no finding (no lungs found)


@dataclass
class AnswerParts:
    """What a model answers with: its fitted parts (the bundle's, or a refit's in leave one source
    out) and the error rate in use. Any part may be None (an older model, a model without a lesion
    head): what needs it is then not given."""

    error_rate: float
    thresholds: Any = None          # SelectiveThresholds of P(COVID) per training source (and site)
    study_thresholds: Any = None    # SelectiveThresholds of studies' P(COVID)
    source_test: Any = None         # SourceTest
    ood: Any = None                 # NearestNeighborOOD
    finding: Any = None             # SelectiveThresholds of the share of lung involved
    site_model: Any = None          # SiteModel of the site the model was calibrated on


@dataclass
class SetVerdict:
    """The source test's verdict on one set of images."""

    n: int
    test: dict | None = None        # SourceTest.test, None when not tested
    checked: bool = True            # False: the model has no source test (nothing to check against)

    @property
    def source(self) -> str | None:
        """The known source the set is exchangeable with (the nearest of them), else None."""
        if self.test is None or not self.test["exchangeable"]:
            return None
        return min(self.test["exchangeable"], key=lambda s: self.test["statistics"][s] / self.test["cut_offs"][s])

    @property
    def unlike_known_sources(self) -> bool:
        """Tested and exchangeable with no known source."""
        return self.test is not None and not self.test["exchangeable"]

    def note(self) -> str:
        t = self.test
        if not self.checked:
            return "the model has no source test (refit it)"
        if t is None:
            return f"its source could not be checked (a set of {self.n} images; the source test needs 10 or more)"
        if self.unlike_known_sources:
            return (f"not assessable: these {self.n} images as a set are unlike every source the model knows (nearest "
                    f"{t['nearest']}: two-sample MMD {t['ratio']:.1f}x its cut-off); calibrate on this site's labeled "
                    "images")
        s = self.source
        return f"a set of {self.n} images like {s} (two-sample MMD {t['statistics'][s] / t['cut_offs'][s]:.2f}x its cut-off)"


def set_verdicts(parts: AnswerParts, raw: np.ndarray, sets: Sequence[str]) -> dict[str, SetVerdict]:
    """Each set's verdict (``sets``: each row's set name; ``raw``: its raw features)."""
    sets = np.asarray(sets, dtype=object)
    out = {}
    for name in dict.fromkeys(sets):
        rows = np.flatnonzero(sets == name)
        if parts.source_test is None:
            out[name] = SetVerdict(len(rows), checked=False)
        else:
            out[name] = SetVerdict(len(rows), parts.source_test.test(raw[rows]))
    return out


@dataclass
class Answers:
    """Per image: the COVID answer and why, P(COVID) where a site model replaced the model's, and
    the thresholds' group (for curves over error rates)."""

    answer: list[str | None]
    note: list[str | None]
    p_covid: np.ndarray
    group: list[str | None] = field(default_factory=list)
    blocked: np.ndarray | None = None       # not assessable whatever the rate (set or image)
    verdicts: dict[str, SetVerdict] = field(default_factory=dict)


def answer_images(parts: AnswerParts, p_covid: np.ndarray, raw: np.ndarray, sets: Sequence[str],
                  in_distribution: Sequence[bool] | None = None, ood_scores: Sequence[float] | None = None,
                  site_inputs: Callable[[np.ndarray], np.ndarray] | None = None) -> Answers:
    """The answers of images (see the module docstring). ``site_inputs``: rows -> the site model's
    input (raw features and lesion summaries), for a calibrated model."""
    p = np.asarray(p_covid, dtype=float).copy()
    n = len(p)
    sets = np.asarray(sets, dtype=object)
    verdicts = set_verdicts(parts, raw, sets)
    answers, notes, groups = [None] * n, [None] * n, [None] * n
    blocked = np.zeros(n, bool)
    if parts.thresholds is None:
        return Answers(answers, notes, p, groups, blocked, verdicts)
    site = None if parts.site_model is None else parts.site_model.site
    for name, verdict in verdicts.items():
        rows = np.flatnonzero(sets == name)
        if verdict.unlike_known_sources:
            blocked[rows] = True
            for i in rows:
                answers[i], notes[i] = NOT_ASSESSABLE, verdict.note()
            continue
        group = verdict.source or POOLED
        if site is not None and group == site and site_inputs is not None:
            p[rows] = parts.site_model.predict_proba(site_inputs(rows))[:, 1]
        coded = parts.thresholds.answer(p[rows], parts.error_rate, group)
        low, high = parts.thresholds.thresholds(parts.error_rate, group)
        by = (f"the {group} thresholds" if group != POOLED else "the pooled thresholds") + \
            (" and the site model" if site is not None and group == site else "")
        for i, code in zip(rows, coded):
            groups[i] = group
            answers[i] = _answer_of(code)
            where = (f"P(COVID) between {by}' {_t(low)} and {_t(high)}" if code < 0
                     else f"answered by {by} ({_t(low)}, {_t(high)})")
            notes[i] = f"{where} at error rate {parts.error_rate:g}; {verdict.note()}"
    if in_distribution is not None:
        for i, ok in enumerate(in_distribution):
            if ok is not None and not bool(ok) and not blocked[i]:
                blocked[i] = True
                score = "" if ood_scores is None else f" (out-of-distribution score {ood_scores[i]:.3f})"
                answers[i] = NOT_ASSESSABLE
                notes[i] = f"not assessable: unlike the training images one by one{score}"
    return Answers(answers, notes, p, groups, blocked, verdicts)


def answers_at(parts: AnswerParts, answers: Answers, error_rate: float) -> list[str]:
    """The same images' answers at another error rate (risk-coverage curves)."""
    out = []
    for i, (p, group) in enumerate(zip(answers.p_covid, answers.group)):
        if answers.blocked is not None and answers.blocked[i]:
            out.append(NOT_ASSESSABLE)
        elif group is None:
            out.append(None)
        else:
            code = int(parts.thresholds.answer([p], error_rate, group)[0])
            out.append(_answer_of(code))
    return out


def certification_notes(parts: AnswerParts, groups: Sequence[str | None], what: str = "images") -> list[str]:
    """One line per thresholds' group used (a source, the pooled one) whose calibration data certify no
    threshold at the error rate in use: every answer of it is then uncertain. The line gives the smallest rate
    that does certify for that group, with the share of its calibration data answered there."""
    if parts.thresholds is None:
        return []
    notes = []
    for group in dict.fromkeys(g for g in groups if g is not None):
        if parts.thresholds.thresholds(parts.error_rate, group) != (None, None):
            continue
        name = "the pooled sources" if group == POOLED else group
        smallest = parts.thresholds.smallest_rate(group)
        notes.append(f"no threshold certifies an error rate of {parts.error_rate:g} for {name} with this model's "
                     f"calibration data, so its {what} are uncertain: "
                     + (f"the smallest rate that does is {smallest[0]:g} (answering {smallest[1]:.0%} of its "
                        f"calibration {what}; --error-rate {smallest[0]:g})" if smallest else
                        "no rate up to 0.5 does") + ", or calibrate the model on more labelled patients")
    return notes


def _answer_of(code: int) -> str:
    """A threshold's code (1 positive, 0 negative, -1 between: risk_control.SelectiveThresholds.answer) as an
    answer."""
    return {1: COVID, 0: NONCOVID}.get(int(code), UNCERTAIN)


def _finding_of(code: int) -> str:
    """The finding's threshold code as a finding."""
    return {1: OPACITIES, 0: CLEAR}.get(int(code), FINDING_UNCERTAIN)


def _t(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def findings(parts: AnswerParts, lesions: Sequence[Any]) -> list[str | None]:
    """Each slice's finding from its LesionSummary (None where the model has no finding calibration)."""
    if parts.finding is None:
        return [None] * len(lesions)
    name = getattr(parts.finding, "score_name_", None) or "lesion_fraction"  # which LesionSummary value it reads
    scores = np.array([np.nan if s is None or getattr(s, name) is None else getattr(s, name) for s in lesions])
    lungs = np.array([s is not None and s.lesion_fraction is not None and s.lung_share_of_slice >= MIN_LUNG_SHARE_OF_SLICE
                      for s in lesions])
    usable = lungs & np.isfinite(scores)
    coded = parts.finding.answer(np.nan_to_num(scores), parts.error_rate)
    return [FINDING_NOT_ASSESSABLE if not ok else _finding_of(c) for ok, c in zip(usable, coded)]


def answer_study(parts: AnswerParts, p_covid: float, verdict: SetVerdict | None,
                 in_distribution: bool | None) -> tuple[str | None, str | None]:
    """A study's answer and the rule that decided: its slices as a set (the source test), most of its
    slices out of distribution, or the study thresholds (calibrated on training patients with several
    slices; a calibrated site's own where it has them)."""
    if verdict is not None and verdict.unlike_known_sources:
        return NOT_ASSESSABLE, verdict.note()
    if in_distribution is False:
        return NOT_ASSESSABLE, "not assessable: most of its scored slices are unlike the training images one by one"
    if parts.study_thresholds is None:
        return (None, None) if parts.thresholds is None else \
            (UNCERTAIN, "no study-level answer: the model has too few training patients with several slices")
    group = study_group(parts, verdict)
    code = int(parts.study_thresholds.answer([p_covid], parts.error_rate, group)[0])
    low, high = parts.study_thresholds.thresholds(parts.error_rate, group)
    rule = f"the study thresholds ({_t(low)}, {_t(high)}) at error rate {parts.error_rate:g}"
    note = f"{'P(COVID) between ' + rule if code < 0 else 'answered by ' + rule}; " + \
        (verdict.note() if verdict is not None else "its source could not be checked")
    return _answer_of(code), note


def study_group(parts: AnswerParts, verdict: SetVerdict | None) -> str:
    """The study thresholds' group a study is answered with: its set's source where the model has that
    source's study thresholds (a calibrated site), else the pooled ones."""
    known = parts.study_thresholds.groups if parts.study_thresholds is not None else []
    return verdict.source if verdict is not None and verdict.source in known else POOLED


def study_in_distribution(slice_flags: Sequence[bool | None]) -> bool | None:
    """A study is in distribution when at least half of its scored slices are (None: none was checked)."""
    flags = [bool(f) for f in slice_flags if f is not None]
    return (sum(flags) * 2 >= len(flags)) if flags else None


def study_finding(slice_findings: Sequence[str | None], error_rate: float) -> tuple[str | None, float | None]:
    """A study's finding and the share of its assessable slices with opacities: ``opacities`` when that
    share is over the error rate (more than wrong answers would explain), ``clear`` when no slice has
    opacities and most are clear, else ``uncertain``; ``not assessable`` without a slice with lungs."""
    known = [f for f in slice_findings if f is not None]
    if not known:
        return None, None
    assessable = [f for f in known if f != FINDING_NOT_ASSESSABLE]
    if not assessable:
        return FINDING_NOT_ASSESSABLE, None
    share = sum(f == OPACITIES for f in assessable) / len(assessable)
    if share > error_rate:
        return OPACITIES, share
    if share == 0 and sum(f == CLEAR for f in assessable) * 2 >= len(assessable):
        return CLEAR, share
    return FINDING_UNCERTAIN, share


def fit_answer_parts(oof: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: Sequence[str], raw: np.ndarray,
                     study_p: np.ndarray, study_y: np.ndarray, delta: float, error_rate: float, seed: int = 0
                     ) -> tuple[Any, Any, Any, dict]:
    """fit's answer parts from the training data: the slice thresholds per source on the patient-grouped
    out-of-fold P(COVID), the study thresholds on the training patients with several slices (None when
    too few), the source test on the raw features; and their record for the model card."""
    from covidct_core.errors import TrainingDataError

    from ..estimators.risk_control import SelectiveThresholds
    from ..estimators.source_test import SourceTest

    thresholds = SelectiveThresholds(delta).fit(oof, y, sources)
    notes = {}
    try:
        study_thresholds = SelectiveThresholds(delta).fit(study_p, study_y)
    except TrainingDataError as exc:
        study_thresholds, notes["studies"] = None, str(exc)
    source_test = SourceTest(random_state=seed).fit(raw, sources, groups)
    record = {"confidence": 1 - delta, "slices": {**thresholds.describe(error_rate), "calibration_data": "the patient-grouped "
              "out-of-fold P(COVID) of the training images, per source and pooled"},
              "studies": notes.get("studies") or {**study_thresholds.describe(error_rate), "calibration_data": "the training "
                                                  "patients with several slices, their out-of-fold P(COVID) pooled by "
                                                  "the study aggregation"},
              "source_test": source_test.describe()}
    return thresholds, study_thresholds, source_test, record
