"""What makes a feature vector: one immutable :class:`FeatureSpec`, and the settings it is built from.

A FeatureSpec holds everything that changes the numbers a backbone gives for an image: the
backbone, the identity of its weights (source and SHA-256), the input size, the pooling, the
test-time augmentation, the precision, the lung crop with its algorithm's version, and the
DICOM window. With ``maps``, the spec is of the segmentation network's inputs (segmentation/): the
backbone's declared map layers at strides 4 to 32 of a square slice. This module alone

- builds the cache identity and the cache file name (``identity``, ``cache_file_name``);
- writes and reads cache attributes and model-manifest entries (``to_record``, ``from_record``);
- describes a spec for reports (``describe``, ``summary``);
- turns command-line options into specs (``SETTINGS`` generates the options; ``from_options``).

Every value has one spelling, the command line's, in the cache, the manifest and the reports:
``--precision bf16`` is stored and shown as ``bf16``, a window as ``LEVEL,WIDTH`` text. Caches
written in format 1 spelled some values otherwise; ``from_record`` reads them (``_from_format_1``).

Adding a setting: a field of FeatureSpec declared with ``setting()`` (SETTINGS, the option of extract
and the filter of fit follow from it), then its use where images become features.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from covidct_core.errors import SettingsError
from covidct_core.settings_schema import Setting, schema, setting

from .backbones import BackboneSpec, get_backbone
from .imaging.decode import LUNG_WINDOW
from .lungs.body import BODY_CROP_VERSION
from .lungs.crop import LUNG_CROP_VERSION
from .segmentation.slices import MAP_INPUT_VERSION
from .weights import IMAGENET, WeightsChoice, parse_choice, parse_weights_options

FORMAT_VERSION = 2  # of cache attributes and manifest entries; 1: before FeatureSpec


def parse_window(text: str) -> tuple[float, ...]:
    """'LEVEL,WIDTH' in HU, e.g. '-600,1500'; or three windows 'L,W/L,W/L,W', one per colour
    channel (e.g. lung, mediastinal, wide: '-600,1500/40,400/-500,2000')."""
    parts = str(text).split("/")
    if len(parts) not in (1, 3):
        raise SettingsError(f"window {text!r}: write LEVEL,WIDTH or three of them as L,W/L,W/L,W")
    values: list[float] = []
    for part in parts:
        try:
            level, width = (float(v) for v in part.split(","))
        except ValueError:
            raise SettingsError(f"window {text!r}: write LEVEL,WIDTH in HU, e.g. -600,1500") from None
        if width <= 0:
            raise SettingsError(f"window {text!r}: the width must be positive")
        values += [level, width]
    return tuple(values)


def window_text(window: Sequence[float] | str) -> str:
    if isinstance(window, str):
        return window
    return "/".join(f"{window[i]:g},{window[i + 1]:g}" for i in range(0, len(window), 2))


def crop_version(crop: str) -> int:
    """The version of the crop algorithm this code runs for ``crop`` (0: no crop)."""
    return {"lungs": LUNG_CROP_VERSION, "lungs-equalized": LUNG_CROP_VERSION, "body": BODY_CROP_VERSION}.get(crop, 0)


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes a feature vector (see the module docstring).

    ``weights`` says where to load the weights from; a file's path is provenance, not identity:
    ``weights_sha256`` is. A spec without it is a request (extract resolves it); a spec with
    it demands those exact weights. ``input_size`` defaults to the backbone's own size.
    """

    backbone: str
    weights: WeightsChoice = WeightsChoice(IMAGENET)
    weights_sha256: str | None = None
    input_size: tuple[int, int] | None = None
    pooling: str = setting("avg", "avg: global average of the last conv block; avgmax: average and max; "
                                  "multiscale: average of the last activation at each of the last 3 resolutions.",
                           choices=("avg", "avgmax", "multiscale"))
    tta: str = setting("none", "Test-time augmentation: flip = mean of image and mirror features.",
                       choices=("none", "flip"), label="TTA")
    precision: str = setting("fp32", "Inference precision: bf16 for CPUs with AVX512-BF16/AMX, mixed (float16) for "
                                     "GPUs.", choices=("fp32", "bf16", "mixed"))
    crop: str = setting("none", "lungs: crop each slice to its lung field and black out the rest (text, arrows, bed), "
                                "so the model cannot learn the image source; lungs-equalized: the same with the lung "
                                "field's histogram equalized (intensity standardization across sources); body: crop to "
                                "the body, padded square (a fixed field of view). Full image, with a warning, where "
                                "nothing is found.", choices=("none", "lungs", "lungs-equalized", "body"))
    window: tuple[float, ...] = setting(LUNG_WINDOW, "DICOM window in HU applied before the CNN (lungs: -600,1500); "
                                                     "three windows L,W/L,W/L,W make the three colour channels.",
                                        metavar="LEVEL,WIDTH[/L,W/L,W]", parse=parse_window, text=window_text,
                                        label="DICOM window")
    crop_version: int | None = field(default=None)  # None: this code's version of ``crop``
    maps: bool = False   # the segmentation network's inputs (backbones.map_model); False: pooled features

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        spec = get_backbone(self.backbone)
        put(self, "backbone", spec.name)
        if isinstance(self.weights, str):
            put(self, "weights", parse_choice(self.weights))
        put(self, "input_size", tuple(int(v) for v in (self.input_size or spec.input_size)))
        for s in SETTINGS:
            put(self, s.name, s.value(getattr(self, s.name)))
        put(self, "window", parse_window(window_text(self.window)))  # checked as if typed
        if self.crop_version is None:
            put(self, "crop_version", crop_version(self.crop))
        put(self, "maps", bool(self.maps))
        if self.maps and (self.input_size[0] != self.input_size[1] or self.input_size[0] % 32):
            raise SettingsError(f"the segmentation network needs a square input whose side is a multiple of 32, "
                                f"not {self.input_size[0]}x{self.input_size[1]}")

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_options(cls, backbone: str, weights: WeightsChoice | None = None,
                     **options: str | None) -> "FeatureSpec":
        """A spec from command-line options (None or absent: the setting's default)."""
        unknown = set(options) - set(SETTING)
        if unknown:
            raise SettingsError(f"unknown feature settings {sorted(unknown)}; valid: {', '.join(SETTING)}")
        values = {k: SETTING[k].value(v) for k, v in options.items() if v is not None}
        return cls(backbone, weights or WeightsChoice(IMAGENET), **values)

    def with_weights(self, sha256: str, path: str | None = None) -> "FeatureSpec":
        """This spec with its weights resolved; ``path``: where they were found (absolute), so
        that a manifest finds them again from any folder."""
        choice = WeightsChoice(self.weights.source, path) if path else self.weights
        return replace(self, weights=choice, weights_sha256=sha256)

    # -- identity ---------------------------------------------------------------------------
    @property
    def backbone_spec(self) -> BackboneSpec:
        return get_backbone(self.backbone)

    @property
    def is_current(self) -> bool:
        """Whether this code computes these features (an older crop algorithm: no)."""
        return self.crop_version == crop_version(self.crop)

    def identity(self) -> dict[str, Any]:
        """What a cache file and a model's features are identified by (JSON values)."""
        if self.weights_sha256 is None:
            raise SettingsError(f"{self.backbone}: the weights must be resolved (hashed) first")
        maps = {}
        if self.maps:  # only map specs carry these: pooled caches keep their names
            maps = {"map_layers": list(self.backbone_spec.map_layers), "map_input_version": MAP_INPUT_VERSION}
        return {"backbone": self.backbone, "weights_source": self.weights.source,
                "weights_sha256": self.weights_sha256, "input_size": list(self.input_size),
                "preprocessing": self.backbone_spec.preprocessing,
                **{s.name: s.text(getattr(self, s.name)) for s in SETTINGS},
                "crop_version": self.crop_version, **maps}

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def cache_file_name(self) -> str:
        return f"{self.backbone}-{self.weights.source}-{self.identity_hash()[:12]}.h5"

    def matches(self, **wanted: Any) -> bool:
        """Whether the spec has every given value (None: any). Keys: the fields' names, and
        ``weights_source``; values as options spell them or as parsed."""
        for name, value in wanted.items():
            if value is None:
                continue
            if name == "weights_source":
                have = self.weights.source
            elif name in SETTING:
                have, value = getattr(self, name), SETTING[name].value(value)
            else:
                have = getattr(self, name)
            if have != value:
                return False
        return True

    # -- records: cache attributes and manifest entries ------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The identity plus where the weights were found: written as cache attributes and
        as a model manifest's entry for this backbone."""
        return {**self.identity(), "weights_path": self.weights.path or ""}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], format_version: int = FORMAT_VERSION) -> "FeatureSpec":
        """The spec a cache's attributes or a manifest entry describe."""
        record = {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v)
                  for k, v in record.items()}
        if format_version == 1:
            record = _from_format_1(record)
        missing = [k for k in ("backbone", "weights_source", "weights_sha256", "input_size", *SETTING,
                               "crop_version") if k not in record]
        if missing:
            raise SettingsError(f"feature settings incomplete (no {', '.join(missing)}); written by an "
                                "older version")
        source = str(record["weights_source"])
        weights = WeightsChoice(source, str(record.get("weights_path") or "") or None)
        return cls(str(record["backbone"]), weights, str(record["weights_sha256"]),
                   tuple(int(v) for v in record["input_size"]),
                   **{s.name: s.value(str(record[s.name])) for s in SETTINGS},
                   crop_version=int(record["crop_version"]), maps=bool(record.get("map_layers")))

    # -- descriptions -----------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        """Labelled values for reports, in a fixed order."""
        out = {"backbone": self.backbone, "weights": self.weights.source,
               "weights SHA-256": self.weights_sha256 or "(not resolved)",
               "input": "x".join(map(str, self.input_size))}
        out.update({s.title: s.text(getattr(self, s.name)) for s in SETTINGS})
        if self.crop_version:
            out[SETTING["crop"].title] += f" (v{self.crop_version})"
        if self.maps:
            out["segmentation maps"] = ", ".join(self.backbone_spec.map_layers)
        return out

    def summary(self) -> str:
        """One line: the backbone and what differs from the defaults."""
        sha = (self.weights_sha256 or "")[:12]
        parts = [f"weights {self.weights.source}" + (f" {sha}" if sha else ""), "x".join(map(str, self.input_size))]
        parts += [f"{s.name} {s.text(getattr(self, s.name))}" for s in SETTINGS
                  if getattr(self, s.name) != s.default]
        if self.maps:
            parts.append("segmentation maps at strides 4-32")
        return f"{self.backbone} ({', '.join(parts)})"


# The settings that change the numbers, declared once as FeatureSpec's fields: extract's options and fit's
# filters are made from them.
SETTINGS: tuple[Setting, ...] = schema(FeatureSpec)
SETTING = {s.name: s for s in SETTINGS}

_FORMAT_1_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "mixed_float16": "mixed"}


def _from_format_1(record: dict[str, Any]) -> dict[str, Any]:
    """Format-1 caches (before FeatureSpec): other keys and spellings for some values."""
    out = dict(record)
    if "weights_path" not in out and "provenance" in out:
        out["weights_path"] = json.loads(out["provenance"]).get("weights_path")
    if "input_height" in out:
        out["input_size"] = [out.pop("input_height"), out.pop("input_width")]
    if "augment" in out:
        out["tta"] = out.pop("augment")
    if "precision" in out:
        out["precision"] = _FORMAT_1_PRECISION.get(str(out["precision"]), str(out["precision"]))
    crop = str(out.get("crop", ""))
    if crop.startswith("lungs-v"):
        out["crop"], out["crop_version"] = "lungs", int(crop[len("lungs-v"):])
    elif crop == "none":
        out["crop_version"] = 0
    return out


def specs_from_options(backbones: Sequence[str], weights_options: Sequence[str] = (),
                       **settings: str | None) -> list[FeatureSpec]:
    """One spec per backbone from extract's options: ``--weights`` values (see
    ``parse_weights_options``) and the SETTINGS options."""
    choices = parse_weights_options(weights_options, backbones)
    return [FeatureSpec.from_options(name, choice, **settings) for name, choice in choices.items()]
