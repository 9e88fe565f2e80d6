"""The pictures shown beside a slice's answer: the slice, its heatmap and its lesion map, made in
one place for the HTML report, the study page and the web service."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

from feature_extractor.imaging.decode import ImageDecodeError, PreparedImage

from ..presentation.heatmaps import overlay_rgb
from ..presentation.lesion_maps import involved, overlay
from ..presentation.pictures import THUMB_SIDE, data_uri, thumbnail
from .model import LoadedModel


@dataclass
class SlicePanels:
    """A slice's pictures as data: URIs (None where not asked for or not available)."""

    image: str | None = None
    heatmap: str | None = None
    lesion: str | None = None
    involved: str | None = None     # "12.3% of lung involved"
    note: str | None = None         # e.g. no lungs found for the crop
    error: str | None = None        # the slice cannot be read (any more)

    def pictures(self) -> dict[str, str]:
        """The pictures the API returns: image, heatmap, lesion (those made)."""
        return {k: v for k, v in (("image", self.image), ("heatmap", self.heatmap), ("lesion", self.lesion)) if v}


def slice_panels(model: LoadedModel, path: str, *, side: int = THUMB_SIDE, overlay_side: int | None = None,
                 explainer=None, site: str | None = None, cnn: ContextManager | None = None) -> SlicePanels:
    """The slice at ``side`` px, its heatmap (with ``explainer``, a workflows/explain.ModelExplainer)
    and its lungs and lesion (models with a segmentation network) at ``overlay_side`` (default: ``side``).
    ``site``: the image's site (harmonized models); ``cnn``: held while a network runs (the web service
    shares one)."""
    overlay_side = overlay_side or side
    cnn = cnn or contextlib.nullcontext()
    try:
        prepared: PreparedImage = model.extractors[0].prepare(path)
    except (ImageDecodeError, OSError) as exc:  # changed since it was scored
        return SlicePanels(error=str(exc))
    panels = SlicePanels(image=data_uri(thumbnail(prepared.original, side)))
    if prepared.crop_fallback:
        panels.note = f"no {prepared.crop.kind} found ({prepared.crop_fallback}): full image used"
    lungs = None
    if model.lesions is not None:
        with cnn:
            segmentation = model.lesions.segment(path)
        panels.lesion = data_uri(overlay(segmentation.grey, segmentation, overlay_side))
        panels.involved = involved(segmentation)
        lungs = segmentation.lungs
    if explainer is not None:  # confined to the lungs where the model finds them: what is outside is not evidence
        with cnn:
            panels.heatmap = data_uri(overlay_rgb(explainer.explain(path, prepared, site), overlay_side, lungs))
    return panels
