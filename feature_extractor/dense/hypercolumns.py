"""Dense frozen features: hypercolumns, what lesion maps are made of.

A frozen backbone's intermediate layers (declared per backbone in backbones.py, strides 4, 8
and 16) are brought to one grid and stacked, so each grid cell of a slice gets a feature
vector that sees fine texture and its surroundings (Hariharan et al., CVPR 2015). The
default: a 448 x 448 input and a 56 x 56 grid (8 px cells), both settings of the FeatureSpec
(``input_size``, ``grid``). What the CNN is shown: slices.py.

Dense features are computed, not cached: a slice's 56 x 56 x 912 float16 grid is 5.7 MB, 200
times its pooled vector, while the CNN pass costs about 0.1 s (BENCHMARKS "Lesions": cost).
What is cached is the lesion head's output per slice (classifiers/workflows/lesions/).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np

from covidct_core.run_context import worker_threads

from ..extract import FeatureExtractor
from ..feature_spec import FeatureSpec
from ..imaging.decode import ImageDecodeError
from ..weights import NONE, build_with_weights
from .slices import DENSE_GRID, DENSE_INPUT, DenseSlice, read_dense


def dense_spec(spec: FeatureSpec, input_side: int = DENSE_INPUT, grid: int = DENSE_GRID) -> FeatureSpec:
    """The dense features of ``spec``'s backbone with the same weights (random-init weights are
    hashed anew: the dense network holds a part of the backbone's layers)."""
    sha = None if spec.weights.source == NONE else spec.weights_sha256
    return FeatureSpec(spec.backbone, spec.weights, sha, (input_side, input_side), grid=grid)


class HypercolumnExtractor(FeatureExtractor):
    """A frozen backbone's dense features (``spec.grid`` set), weights resolved and checked like
    the pooled extractor's."""

    def __init__(self, spec: FeatureSpec, context=None):
        if spec.grid is None:
            raise ValueError("a dense FeatureSpec needs a grid")
        super().__init__(spec, context)

    def _build(self, weights):
        return build_with_weights(self.spec.backbone_spec, weights, self.spec.input_size, precision=self.spec.precision,
                                  grid=self.spec.grid)

    @property
    def feature_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def grids(self, slices: Sequence[DenseSlice], dtype=np.float16) -> np.ndarray:
        """(N, grid, grid, D) hypercolumns of prepared slices: float16 to train (bounded memory for
        many slices' cells), float32 to apply (the CNN's own output: converting a slice's 2.9M values
        to float16 and back cost 25 ms, more than the dense CNN pass on ONNX Runtime)."""
        return self.grids_of_inputs(np.stack([s.model_input(self.input_side) for s in slices]), dtype)

    @property
    def input_side(self) -> int:
        return self.spec.input_size[0]

    def grids_of_inputs(self, inputs: np.ndarray, dtype=np.float16) -> np.ndarray:
        """grids() of slices' model inputs, (N, side, side, 3), made beforehand (e.g. in a decoding thread)."""
        return np.asarray(self.forward(eager=len(inputs) == 1)(self.preprocess(inputs)), dtype=dtype)

    def batches(self, paths: Sequence[str], progress_label: str = "lesion maps   ", dtype=np.float16
                ) -> Iterator[tuple[str, DenseSlice | str, np.ndarray | None]]:
        """(path, DenseSlice or why it cannot be read, its grid of features or None) for each path, in
        batches, decoding (and masking) one batch ahead of the CNN in threads; features as ``dtype``."""
        batch, side = self.context.batch_size, self.input_side

        def load(path: str):
            try:
                dense = read_dense(path)
            except ImageDecodeError as exc:
                return str(exc)
            except OSError as exc:
                return f"cannot read file: {exc.strerror or exc}"
            return dense, dense.model_input(side)

        with ThreadPoolExecutor(worker_threads()) as pool, self.context.progress(progress_label, len(paths)) as progress:
            chunks = [list(paths[i:i + batch]) for i in range(0, len(paths), batch)]
            pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
            for i, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                if i + 1 < len(chunks):
                    pending = [pool.submit(load, p) for p in chunks[i + 1]]
                readable = [item for item in loaded if not isinstance(item, str)]
                grids = iter(self.grids_of_inputs(np.stack([x for _, x in readable]), dtype)) if readable else iter(())
                for path, item in zip(chunk, loaded):
                    yield (path, item, None) if isinstance(item, str) else (path, item[0], next(grids))
                progress(len(chunk))

