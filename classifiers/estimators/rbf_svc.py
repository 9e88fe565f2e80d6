"""An RBF support vector classifier whose scores come from BLAS instead of libsvm's loop.

libsvm evaluates the kernel one support vector and one sample at a time, without BLAS: on the
demo's features (1280-2560 dims, about 1600 support vectors, five calibrated SVCs per base
model) that was 20 ms per slice of a study, as long as the dense CNN pass. The same decision
function, sum_i dual_coef_i * exp(-gamma * ||x - sv_i||^2) + intercept, as one matrix product
per block of rows, agrees with libsvm's to rounding (tests/test_classifiers.py). Fitting is
libsvm's, unchanged: this class only adds a faster ``decision_function`` for the binary dense
case (anything else goes to SVC's own).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.svm import SVC

_ROWS_PER_BLOCK = 1024  # bounds the kernel block: rows x support vectors float64


class RBFSVC(SVC):
    """sklearn's SVC (same parameters, same fit) with a BLAS decision function for a binary
    RBF model on dense features."""

    def decision_function(self, X):
        if self.kernel != "rbf" or getattr(self, "_sparse", True) or len(getattr(self, "classes_", ())) != 2 \
                or sp.issparse(X):
            return super().decision_function(X)
        X = self._validate_for_predict(X)
        sv = self.support_vectors_
        coef = self.dual_coef_[0]
        sv_norms = np.einsum("ij,ij->i", sv, sv)
        out = np.empty(len(X))
        for start in range(0, len(X), _ROWS_PER_BLOCK):
            block = X[start:start + _ROWS_PER_BLOCK]
            d2 = np.einsum("ij,ij->i", block, block)[:, None] + sv_norms[None, :] - 2.0 * (block @ sv.T)
            np.maximum(d2, 0.0, out=d2)
            out[start:start + len(block)] = np.exp(-self._gamma * d2) @ coef
        return out + self.intercept_[0]
