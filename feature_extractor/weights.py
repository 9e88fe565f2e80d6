"""Where a backbone's weights come from: keras' ImageNet cache/download, a local file, or none.

``imagenet`` (the default) goes through keras' own download and cache
(``$KERAS_HOME/models/``, default ``~/.keras/models/``): with the file already there, it
works offline. ``FILE`` loads a local file, for air-gapped sites. ``none`` is random init
(seeded), for tests only. Offline mode (``COVIDCT_OFFLINE=1`` or ``--offline``) never tries
to download and fails at once with the file name and folder to use.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from covidct_core.errors import CovidCTError, WeightsUnavailableError
from covidct_core.provenance import sha256_file

from .backbones import BackboneSpec, get_backbone

IMAGENET, FILE, NONE = "imagenet", "file", "none"
RANDOM_SEED = 0  # weights=none must give the same features every run, or the cache lies
NONE_WARNING = "RANDOM INIT (weights=none): NOT PRETRAINED, features are meaningless for diagnosis"


@dataclass(frozen=True)
class WeightsChoice:
    """What the user asked for one backbone."""

    source: str  # IMAGENET | FILE | NONE
    path: str | None = None

    def __str__(self) -> str:
        return self.path if self.source == FILE else self.source


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights ready to load: the file (if any) and its SHA-256."""

    source: str
    path: str | None
    sha256: str | None  # None: imagenet not yet downloaded, or none before the model exists

    @property
    def keras_argument(self) -> str | None:
        """What the keras constructor gets: a file once we have one (keras reads KERAS_HOME
        only at import), "imagenet" only to make keras download it."""
        if self.source == NONE:
            return None
        return self.path if self.sha256 else IMAGENET


def offline_mode() -> bool:
    return os.environ.get("COVIDCT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def keras_models_dir() -> Path:
    """The folder keras looks in (and downloads to) for application weights.

    Mirrors keras: $KERAS_HOME, else ~/.keras (or /tmp/.keras when home is read-only), and
    /tmp/.keras again when that folder is not writable.
    """
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path("~").expanduser()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    if base.exists() and not os.access(base, os.W_OK):
        base = Path("/tmp/.keras")
    return base / "models"


def imagenet_file(spec: BackboneSpec) -> Path:
    return keras_models_dir() / spec.imagenet_file


def backbones_listing() -> str:
    """The registered backbones, and whether keras' ImageNet file of each is here (offline)."""
    from .backbones import BACKBONES

    header = f"{'name':<15} {'input':>7} {'dim':>5}  {'offline':<7}  imagenet weights file"
    lines = [f"ImageNet weights are looked up in keras' cache: {keras_models_dir()}/ "
             "(set KERAS_HOME to change it)", "", header, "-" * len(header)]
    for spec in BACKBONES.values():
        here = "yes" if imagenet_file(spec).is_file() else "no"
        size = f"{spec.input_size[0]}x{spec.input_size[1]}"
        lines.append(f"{spec.name:<15} {size:>7} {spec.feature_dim:>5}  {here:<7}  {spec.imagenet_file}")
    lines += ["", "'no': keras downloads the file on first use (needs internet), or pass --weights NAME=FILE."]
    return "\n".join(lines)


def parse_choice(text: str) -> WeightsChoice:
    low = text.strip().lower()
    if low in (IMAGENET, NONE):
        return WeightsChoice(low)
    return WeightsChoice(FILE, str(Path(text).expanduser()))


def parse_weights_options(options: Iterable[str], backbones: Sequence[str],
                          default: str | None = IMAGENET) -> dict[str, WeightsChoice]:
    """Map backbones to their weights from ``--weights`` values.

    Values: ``imagenet`` | ``none`` | ``FILE`` (all backbones: only sensible for one) |
    ``NAME=imagenet|none|FILE`` (repeatable). Backbones not named get ``default`` (None:
    they are left out).
    """
    names = list(dict.fromkeys(get_backbone(b).name for b in backbones))
    result = {name: WeightsChoice(default) for name in names} if default else {}
    for option in options:
        name, sep, value = option.partition("=")
        if sep and not Path(option).exists():
            backbone = get_backbone(name).name
            if backbone not in names:
                raise CovidCTError(f"--weights {option}: backbone {backbone} is not among the "
                                   f"selected ones ({', '.join(names)})")
            result[backbone] = parse_choice(value)
            continue
        choice = parse_choice(option)
        if choice.source == FILE and len(names) > 1:
            raise CovidCTError(f"--weights {option}: a file fits one backbone; with several, "
                               "write NAME=FILE for each")
        result = {name: choice for name in names}
    return result


def _how_to_get(spec: BackboneSpec) -> str:
    folder = keras_models_dir()
    return (f"Put the file {spec.imagenet_file} in {folder}/ (keras' weight cache; set "
            f"KERAS_HOME to use another folder, the file goes in $KERAS_HOME/models/), or pass "
            f"--weights {spec.name}=/path/to/weights.h5. To get the file, run on a machine with "
            f"internet: python -c \"import keras; keras.applications.{spec.constructor}("
            f"include_top=False, weights='imagenet'{_kwargs_text(spec)})\" and copy it from "
            f"~/.keras/models/.")


def _kwargs_text(spec: BackboneSpec) -> str:
    return "".join(f", {k}={v!r}" for k, v in spec.kwargs.items())


def resolve_weights(backbone: str | BackboneSpec, choice: WeightsChoice,
                    offline: bool | None = None) -> ResolvedWeights:
    """Check that the chosen weights can be had, and hash the file when it exists."""
    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone)
    if choice.source == NONE:
        return ResolvedWeights(NONE, None, None)
    if choice.source == FILE:
        path = Path(choice.path or "")
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file for {spec.name} not found: {path}")
        return ResolvedWeights(FILE, str(path.resolve()), sha256_file(path))
    cached = imagenet_file(spec)
    if cached.is_file():
        return ResolvedWeights(IMAGENET, str(cached), sha256_file(cached))
    if offline_mode() if offline is None else offline:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} are not in keras' cache and offline mode is on. "
            + _how_to_get(spec))
    return ResolvedWeights(IMAGENET, str(cached), None)  # keras downloads it on build


def build_with_weights(spec: BackboneSpec, weights: ResolvedWeights,
                       input_size: tuple[int, int] | None = None, pooling: str = "avg",
                       precision: str = "fp32", maps: bool = False):
    """Build the backbone with its weights; returns (model, weights with sha256 filled in).
    ``maps``: the segmentation network's inputs (backbones.map_model) instead of pooled features.

    Download failures and unusable files become WeightsUnavailableError with a fix.
    """
    from .backbones import build_model

    if weights.source == NONE:
        from .runtimes.keras_backend import keras_module

        keras_module().utils.set_random_seed(RANDOM_SEED)
        model = build_model(spec, None, input_size, pooling, precision, maps)
        return model, ResolvedWeights(NONE, None, _hash_model_weights(model))
    try:
        model = build_model(spec, weights.keras_argument, input_size, pooling, precision, maps)
    except CovidCTError:
        raise
    except Exception as exc:  # keras raises bare Exception for download failures
        reason = " ".join(str(exc).split())[:300]
        if weights.source == IMAGENET and weights.sha256 is None:
            url = re.search(r"https?://\S+?(?=:?\s|$)", reason)
            where = f" from {url.group(0)}" if url else ""
            raise WeightsUnavailableError(
                f"ImageNet weights for {spec.name} could not be downloaded{where} "
                f"(no internet?). " + _how_to_get(spec)) from None
        raise WeightsUnavailableError(
            f"weights file {weights.path} could not be loaded into {spec.name}: {reason}") from None
    if weights.sha256 is None:  # just downloaded by keras
        weights = ResolvedWeights(IMAGENET, weights.path, sha256_file(imagenet_file(spec)))
    return model, weights


def _hash_model_weights(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(w.tobytes())
    return digest.hexdigest()
