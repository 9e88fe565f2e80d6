"""fit --lesion-data: the segmentation network's decoders trained on radiologists' masks
(estimators/segmenter.py), and the finding calibrated on their out-of-fold maps.

Every slice with an infection mask is read once, shown to the frozen backbone in ``views`` copies
(itself; mirrored, its lungs' labels swapped; and augmented ones: a random mirror, rotation by up to
10 degrees, scale by 0.9-1.1, window and intensity jitter), and the backbone's maps are kept (float16)
for all epochs: only the decoders train. The radiologists' lung mask is split into the image-left and
image-right lung (lungs/sides.py); a data set without lung masks (lesion-slices-sirm) trains the lesion
only. Each slice is then mapped by the member that did not see its patient: those out-of-fold maps, at
the slice's own pixels, are what the model card reports against the radiologists, and what the
finding's thresholds are calibrated on (Learn-then-Test on the slice labels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError, TrainingDataError
from covidct_core.run_context import RunContext
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.decode import ImageDecodeError
from feature_extractor.lungs.sides import LEFT, RIGHT, lung_sides
from feature_extractor.segmentation.encoder import MapExtractor, map_spec
from feature_extractor.segmentation.lesion_data import LesionData, LesionSlice, check_masks, slice_masks
from feature_extractor.segmentation.slices import SegmentationSlice, read_segmentation_slice

from ...estimators.risk_control import SelectiveThresholds
from ...estimators.segmenter import LungLesionSegmenter, SegmentationData
from ...records.lesion_summary import SliceSegmentation
from ...settings import LesionSettings
from ..answer_policy import MIN_LUNG_SHARE_OF_SLICE
from .summary import segmentation_of

# The finding's candidate slice scores (LesionSummary values), chosen by out-of-fold AUC at fit.
FINDING_SCORES = ("lesion_fraction", "lesion_p_max")


@dataclass
class OutOfFold:
    """A training slice mapped by the member that did not see its patient, and its masks' agreement."""

    slice: LesionSlice
    segmentation: SliceSegmentation
    lesion: tuple[int, int] | None = None    # (overlap, total) of the lesion against the infection mask
    lungs: tuple[int, int] | None = None     # ... of the lungs against the lung mask
    inside: tuple[int, int] | None = None    # (the radiologists' lesion pixels inside our lungs, all of them)


@dataclass
class SegmentationFit:
    segmenter: LungLesionSegmenter
    record: dict
    out_of_fold: list[OutOfFold] = field(default_factory=list)


def train_segmentation(data: LesionData, spec: FeatureSpec, settings: LesionSettings,
                       context: RunContext | None = None) -> SegmentationFit:
    """The decoders trained on the masked slices of ``data``; their out-of-fold maps; the card's record."""
    context = context or RunContext()
    masked = data.with_masks
    if not masked:
        raise CovidCTError(f"--lesion-data {', '.join(data.folders)}: no slice has an infection mask; slice "
                           "labels alone (slices.csv) measure a model's lesion maps (evaluate --lesion-data), they "
                           "cannot train them")
    check_masks(data)  # every mask fits its slice before the CNN runs
    extractor = MapExtractor(map_spec(spec, settings.side), context)
    training = training_views(masked, extractor, settings)
    segmenter = LungLesionSegmenter(settings.width, settings.output_stride, settings.epochs, settings.members,
                                    settings.per_patient, random_state=settings.seed,
                                    cut_off=settings.cut_off).fit(training)
    oof = out_of_fold(segmenter, training, masked, settings)
    record = {"maps": extractor.resolved_spec.to_record(), "data": data.describe(), "segmenter": segmenter.describe(),
              "settings": settings.record(), "out_of_fold": agreement_record(oof), "notes": list(data.notes)}
    return SegmentationFit(segmenter, record, oof)


def training_views(slices: Sequence[LesionSlice], extractor: MapExtractor, settings: LesionSettings
                   ) -> SegmentationData:
    """Each slice's views at the network's side and the backbone's maps of them (see the module docstring),
    a few slices at a time: only the maps, the slices' grey levels and the labels are kept."""
    side, views = extractor.side, settings.views
    rng = np.random.default_rng(settings.seed)
    n = len(slices) * views
    maps: list[list[np.ndarray]] = [[] for _ in range(4)]
    grey = np.zeros((n, side, side), np.float16)
    lungs, lesion = np.zeros((n, side, side), np.uint8), np.zeros((n, side, side), np.uint8)
    chunk = max(1, extractor.context.batch_size // views)
    with extractor.context.progress("lesion maps   ", len(slices)) as progress:
        for start in range(0, len(slices), chunk):
            batch = []
            for s in slices[start:start + chunk]:
                try:
                    seg = read_segmentation_slice(s.path)
                except (ImageDecodeError, OSError) as exc:
                    raise CovidCTError(f"lesion slice {s.path} cannot be read: {exc}") from None
                batch += slice_views(seg, slice_masks(s, seg.shape), side, views, rng)
            rows = slice(start * views, start * views + len(batch))
            x = extractor.network_input(np.stack([g for g, _, _ in batch]))
            for k, m in enumerate(extractor.maps_of_input(x)):
                maps[k].append(m)
            grey[rows] = x[..., 0]
            lungs[rows], lesion[rows] = [lu for _, lu, _ in batch], [le for _, _, le in batch]
            progress(len(batch) // views)
    return SegmentationData([np.concatenate(m) for m in maps], grey, lungs, lesion,
                            np.array([s.group for s in slices]), np.array([bool(s.lung_mask) for s in slices]), views)


def slice_views(seg: SegmentationSlice, masks, side: int, views: int, rng: np.random.Generator):
    """(grey, lung labels, lesion) at the network's side: the slice, its mirror, then augmented copies.
    Lung labels: 0 outside, 1 the image-left lung, 2 the image-right lung."""
    grey = seg.network_input(side)
    lesion = _on_network(seg, masks.infection, side) >= 0.5
    labels = np.zeros((side, side), np.uint8)
    if masks.lungs is not None:
        sides = lung_sides(masks.lungs)
        left, right = _on_network(seg, sides == RIGHT, side), _on_network(seg, sides == LEFT, side)
        labels[(left >= 0.5) & (left >= right)] = 1
        labels[(right >= 0.5) & (right > left)] = 2
    out = [(grey, labels, lesion)]
    if views > 1:
        out.append(_mirrored(grey, labels, lesion))
    for _ in range(views - 2):
        out.append(_augmented(grey, labels, lesion, rng))
    return [(g, lu, le.astype(np.uint8)) for g, lu, le in out]


def _on_network(seg: SegmentationSlice, mask: np.ndarray, side: int) -> np.ndarray:
    return SegmentationSlice(mask.astype(np.float32)).network_input(side)


def _mirrored(grey, labels, lesion):
    swapped = np.select([labels == 1, labels == 2], [2, 1], 0).astype(np.uint8)
    return grey[:, ::-1].copy(), swapped[:, ::-1].copy(), lesion[:, ::-1].copy()


def _augmented(grey, labels, lesion, rng: np.random.Generator):
    """A random mirror, rotation (up to 10 degrees), scale (0.9-1.1), and window and intensity jitter."""
    from scipy import ndimage as ndi

    if rng.random() < 0.5:
        grey, labels, lesion = _mirrored(grey, labels, lesion)
    angle, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.9, 1.1)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = (np.array(grey.shape) - 1) / 2
    offset = centre - turn @ centre
    grey = ndi.affine_transform(grey, turn, offset, order=1, mode="constant", cval=0.0)
    labels = ndi.affine_transform(labels, turn, offset, order=0, mode="constant", cval=0)
    lesion = ndi.affine_transform(lesion.astype(np.uint8), turn, offset, order=0, mode="constant", cval=0)
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-20, 20)
    return np.clip(contrast * (grey - 128) + 128 + brightness, 0, 255), labels, lesion


def out_of_fold(segmenter: LungLesionSegmenter, training: SegmentationData, slices: Sequence[LesionSlice],
                settings: LesionSettings) -> list[OutOfFold]:
    """Each slice mapped (view 0) by the member that did not see its patient, at its own pixels, against
    its masks."""
    from .summary import MinimumArea

    minimum = MinimumArea(settings.min_lesion_mm2, settings.min_lesion_px)
    by_member: dict[int, list[int]] = {}
    for i, s in enumerate(slices):
        by_member.setdefault(segmenter.fold_of_group_[s.group], []).append(i)
    out: dict[int, OutOfFold] = {}
    for k, index in by_member.items():
        rows = training.rows(np.array(index))
        p = segmenter.predict_proba([m[rows] for m in training.maps], training.slices[rows], [segmenter.members_[k]])
        for i, probabilities in zip(index, p):
            s = slices[i]
            seg = read_segmentation_slice(s.path)
            out[i] = scored(s, segmentation_of(seg, probabilities, segmenter.threshold_, minimum))
    return [out[i] for i in range(len(slices))]


def scored(s: LesionSlice, segmentation: SliceSegmentation) -> OutOfFold:
    """A slice's segmentation against its masks."""
    masks = slice_masks(s, segmentation.sides.shape)
    result = OutOfFold(s, segmentation)
    if masks.infection is not None:
        result.lesion = (int((segmentation.lesion & masks.infection).sum()),
                         int(segmentation.lesion.sum() + masks.infection.sum()))
        result.inside = (int((masks.infection & segmentation.lungs).sum()), int(masks.infection.sum()))
    if masks.lungs is not None:
        result.lungs = (int((segmentation.lungs & masks.lungs).sum()), int(segmentation.lungs.sum() + masks.lungs.sum()))
    return result


def pooled(parts: Sequence[tuple[int, int] | None]) -> float | None:
    """Dice (or a share) pooled over slices: twice the overlaps over the totals (share: overlaps over all)."""
    known = [p for p in parts if p is not None]
    total = sum(b for _, b in known)
    return None if not known or total == 0 else sum(a for a, _ in known) / total


def agreement_record(oof: Sequence[OutOfFold]) -> dict:
    """The out-of-fold maps against the radiologists, per source: lesion and lung Dice, lesion inside the lungs."""
    out = {}
    for source in dict.fromkeys(o.slice.source for o in oof):
        mine = [o for o in oof if o.slice.source == source]
        lesion, lungs = pooled([o.lesion for o in mine]), pooled([o.lungs for o in mine])
        out[source] = {"slices": len(mine), "lesion_dice": None if lesion is None else round(2 * lesion, 4),
                       "lung_dice": None if lungs is None else round(2 * lungs, 4),
                       "lesion_inside_lungs": pooled([o.inside for o in mine if o.lungs is not None])}
    return out


def finding_calibration(oof: Sequence[OutOfFold], delta: float) -> tuple[SelectiveThresholds | None, dict]:
    """The finding's answer thresholds on the out-of-fold slice scores of the labelled slices whose lungs
    were found; the score (of FINDING_SCORES) is the one with the better out-of-fold AUC. Also the
    calibration's record (patients as numbers, no names)."""
    from sklearn.metrics import roc_auc_score

    usable = [o for o in oof if o.slice.infected is not None and o.segmentation.summary.lesion_fraction is not None
              and o.segmentation.summary.lung_share_of_slice >= MIN_LUNG_SHARE_OF_SLICE]
    y = np.array([o.slice.infected for o in usable], dtype=int)
    candidates = {name: [getattr(o.segmentation.summary, name) for o in usable] for name in FINDING_SCORES}
    aucs = {name: float(roc_auc_score(y, v)) if len(set(y)) == 2 else float("nan") for name, v in candidates.items()}
    chosen = max(FINDING_SCORES, key=lambda name: (np.nan_to_num(aucs[name], nan=-1), -FINDING_SCORES.index(name)))
    numbers = {g: i for i, g in enumerate(dict.fromkeys(o.slice.group for o in usable))}
    record = {"score": chosen, "score_choice": "the out-of-fold slice AUC of each candidate: "
              + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()),
              "labels": "the lesion data's slice labels (infected)", "n_slices": len(y),
              "n_infected": int(y.sum()) if len(y) else 0, "oof_auc": None if np.isnan(aucs[chosen]) else aucs[chosen],
              "oof_columns": ["source", "patient number", "infected", "score"],
              "oof": [[o.slice.source, numbers[o.slice.group], int(o.slice.infected), round(float(score), 5)]
                      for o, score in zip(usable, candidates[chosen])]}
    try:
        return SelectiveThresholds(delta).fit(candidates[chosen], y, score_name=chosen), record
    except TrainingDataError as exc:
        record["missing"] = str(exc)
        return None, record
