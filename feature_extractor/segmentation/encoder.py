"""The segmentation network on a runtime: the frozen backbone's maps alone (:class:`MapExtractor`, what
the decoders are trained on) and the whole network with its trained decoders (:class:`SegmentationNetwork`,
what maps a slice). Both resolve and check the backbone's weights like the pooled extractor and run
through the same runtimes (ONNX Runtime by default: exported once per machine, runtimes/inference.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from covidct_core.errors import SettingsError

from ..extract import FeatureExtractor
from ..feature_spec import FeatureSpec
from ..weights import NONE, build_with_weights
from .slices import SEG_SIDE


def map_spec(spec: FeatureSpec, side: int = SEG_SIDE) -> FeatureSpec:
    """The segmentation maps of ``spec``'s backbone, with the same weights, at a ``side`` px square
    (random-init weights are hashed anew: the map model holds a part of the backbone's layers)."""
    sha = None if spec.weights.source == NONE else spec.weights_sha256
    return FeatureSpec(spec.backbone, spec.weights, sha, (side, side), maps=True)


class MapExtractor(FeatureExtractor):
    """A frozen backbone's four maps (strides 4 to 32) of square slices, weights resolved and checked like
    the pooled extractor's."""

    def __init__(self, spec: FeatureSpec, context=None):
        if not spec.maps:
            raise SettingsError("a map extractor needs a FeatureSpec with maps=True (segmentation.map_spec)")
        super().__init__(spec, context)

    def _build(self, weights):
        return build_with_weights(self.spec.backbone_spec, weights, self.spec.input_size, precision=self.spec.precision,
                                  maps=True)

    @property
    def side(self) -> int:
        return self.spec.input_size[0]

    def network_input(self, grey: np.ndarray) -> np.ndarray:
        """(N, side, side) grey levels 0-255 as the backbone's preprocessed (N, side, side, 3) input."""
        return self.preprocess(np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=-1))

    def maps_of_input(self, x: np.ndarray, dtype=np.float16) -> list[np.ndarray]:
        """The four maps of a preprocessed (N, side, side, 3) batch (network_input), as ``dtype``."""
        return [np.asarray(o, dtype) for o in self.forward(eager=len(x) == 1)(x)]


@dataclass(frozen=True)
class Decoders:
    """Trained decoders as plain data (classifiers/estimators/segmenter.py makes them): each member's
    weights, and the architecture's settings."""

    members: Sequence[Sequence[np.ndarray]]
    width: int
    output_stride: int

    def sha256(self) -> str:
        digest = hashlib.sha256(f"{self.width}/{self.output_stride}".encode())
        for weights in self.members:
            for w in weights:
                digest.update(np.ascontiguousarray(w, np.float32).tobytes())
        return digest.hexdigest()


class SegmentationNetwork(MapExtractor):
    """The whole network: the backbone's preprocessed slices in, (N, side, side, 4) probabilities out
    (network.OUTPUTS), the mean of its decoders'."""

    def __init__(self, spec: FeatureSpec, decoders: Decoders, context=None):
        super().__init__(spec, context)
        self.decoders = decoders
        self._identity = None

    def _build(self, weights):
        from ..runtimes.keras_backend import keras_module
        from .network import segmentation_model

        encoder, weights = super()._build(weights)
        return segmentation_model(keras_module(), encoder, self.decoders.members, self.decoders.width,
                                  self.decoders.output_stride), weights

    def forward(self, eager: bool = False):
        """The network's forward pass on the context's runtime; exported with its decoders' hash in its name."""
        from covidct_core.run_settings import TENSORFLOW

        if self.context.runtime == TENSORFLOW:
            return super().forward(eager)
        if self._forward is None:
            from ..runtimes.inference import forward

            identity = {**self.resolved_spec.identity(), "decoders_sha256": self.decoders.sha256()}
            self._forward = forward(self.context.runtime, lambda: self.model, identity)
        return self._forward

    def probabilities(self, grey: np.ndarray) -> np.ndarray:
        """(N, side, side, 4) float32 probabilities of (N, side, side) grey slices (0-255)."""
        return np.asarray(self.forward(eager=len(grey) == 1)(self.network_input(grey)), np.float32)
