"""The lungs and lesion segmentation network's trained part: decoders on the frozen backbone's maps
(feature_extractor/segmentation/network.py), fit on radiologists' masks in Keras.

One training run on a few patients is a lottery (a decoder from another random start scored 0.48
lesion Dice where the first scored 0.77), so the recipe is an ensemble by patient-grouped folds, as
nnU-Net's five folds: each member trains on the other folds' patients from its own random start, keeps
the epoch its own fold's patients score best (lesion Dice, lung Dice: early stopping by patient-grouped
validation), and the ensemble averages the members' probabilities. Each training slice thus has a member
that never saw its patient: its out-of-fold maps calibrate the finding (workflows/lesions/training.py).

The lesion's cut-off (``cut_off``): "pooled", the best Dice on the members' pooled out-of-fold maps,
applied to their mean; or "member", each member's own (the best Dice on its fold's maps at the kept
epoch, the Dice curve smoothed over neighbouring cut-offs: it is flat near its top) folded into its
lesion bias, so every member and their mean cut at 0.5 (:data:`CUT`). Members of one fit differ in
calibration (their best cut-offs 0.3 to 0.6) and the pooled argmax follows whichever dominates; the
bench's random starts measure both rules (BENCHMARKS "Lungs and lesions: random starts").

Loss: cross-entropy plus soft Dice (pooled over the batch) for the lungs (right and left) and for the
lesion, the lungs' terms masked where a data set gives no lung masks; computed where the decoder's
logits are (its output stride), against the masks' shares of each cell there: the same information as a
loss on the resized logits, at a sixteenth of its cost (a loss at 256 px cost more than the decoder). Training reads the backbone's maps
of each slice's views (computed once: original, mirrored with the lungs' labels swapped, augmented),
one view drawn per slice and epoch, at most ``per_patient`` slices of a patient per epoch (one patient
holds most of the slices of the shared data). Weights are kept as NumPy arrays: the estimator pickles
without Keras, which only the fit and the network's export import.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from covidct_core.errors import TrainingDataError

THRESHOLDS = np.round(np.arange(0.2, 0.81, 0.05), 2)   # the lesion cut-offs tried on a member's fold
CUT = 0.5   # every member's lesion probability, and the ensemble's, cuts here (its own cut-off folded in)


@dataclass
class SegmentationData:
    """Training slices for the network, each in ``views`` copies (view 0: the slice itself).

    ``maps``: the backbone's four maps, (N * views, h, w, c) float16 each, slice i's views at rows
    i * views ... i * views + views - 1; ``slices``: (N * views, side, side) float16, the backbone's
    preprocessed grey levels (its input's first channel); ``lungs``: (N * views, side, side) uint8 labels
    (0 outside, 1 the image-left lung, 2 the image-right lung); ``lesion``: the same 0/1; ``groups``:
    (N,) each slice's patient; ``has_lungs``: (N,) whether its lungs were drawn."""

    maps: list[np.ndarray]
    slices: np.ndarray
    lungs: np.ndarray
    lesion: np.ndarray
    groups: np.ndarray
    has_lungs: np.ndarray
    views: int

    @property
    def n(self) -> int:
        return len(self.groups)

    def rows(self, index: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(index) * self.views + (0 if views is None else np.asarray(views))

    def subset(self, index: np.ndarray) -> "SegmentationData":
        """The slices at ``index`` with all their views (e.g. leave one patient out)."""
        index = np.asarray(index)
        rows = (index[:, None] * self.views + np.arange(self.views)[None]).ravel()
        return SegmentationData([m[rows] for m in self.maps], self.slices[rows], self.lungs[rows], self.lesion[rows],
                                self.groups[index], self.has_lungs[index], self.views)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


class LungLesionSegmenter(BaseEstimator):
    """An ensemble of decoders by patient-grouped folds (see the module docstring).

    Parameters
    ----------
    width : the decoder's channels at stride 4 (network.decoder).
    output_stride : where its last convolution runs (1, 2 or 4).
    epochs : passes over the (capped) training slices; the best of the second half is kept.
    members : folds, one decoder each, at least 2 (fewer when there are fewer patients).
    per_patient : at most this many slices of a patient per epoch.
    batch_size, learning_rate : Adam with cosine decay.
    cut_off : "pooled" or "member": where the lesion's cut-off comes from (see the module docstring).
    random_state : each member's start is random_state * 100 + its fold.

    Attributes
    ----------
    members_ : each member's decoder weights; fold_of_group_ : patient -> the member that did not see it;
    threshold_ : the lesion's cut-off on the members' mean (CUT where each member's own is in its bias);
    validation_ : each member's best epoch, its cut-off and its fold's Dice; oof_lesion_dice_ : the
    out-of-fold maps' pooled lesion Dice at the network's side;
    map_shapes_, side_ : what the decoders read; seconds_ : training time.
    """

    _parameter_constraints: dict = {
        "width": [Interval(Integral, 8, None, closed="left")], "output_stride": [StrOptions({"1", "2", "4"}), Integral],
        "epochs": [Interval(Integral, 1, None, closed="left")], "members": [Interval(Integral, 2, None, closed="left")],
        "per_patient": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")], "random_state": ["random_state"],
        "cut_off": [StrOptions({"pooled", "member"})],
    }

    def __init__(self, width: int = 16, output_stride: int = 4, epochs: int = 12, members: int = 3,
                 per_patient: int = 100, batch_size: int = 16, learning_rate: float = 3e-3, random_state: int = 0,
                 cut_off: str = "member"):
        self.width = width
        self.output_stride = output_stride
        self.epochs = epochs
        self.members = members
        self.per_patient = per_patient
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.cut_off = cut_off

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, data: SegmentationData) -> "LungLesionSegmenter":
        self._validate_params()
        start = time.perf_counter()
        folds = self._folds(data.groups)
        self.map_shapes_ = [tuple(int(v) for v in m.shape[1:]) for m in data.maps]
        self.side_ = int(data.slices.shape[1])
        targets = self._targets(data)
        self.members_, self.validation_, oof = [], [], {}
        for k, held in enumerate(folds):
            validate = np.flatnonzero(np.isin(data.groups, held))
            train = np.setdiff1d(np.arange(data.n), validate)
            weights, record = self._train_member(data, targets, train, validate, int(self.random_state) * 100 + k)
            self.members_.append(weights)
            self.validation_.append(record)
            probabilities = self._predict(data, data.rows(validate), [weights])
            oof.update(zip(validate, probabilities))
        self.fold_of_group_ = {g: k for k, held in enumerate(folds) for g in held}
        self.threshold_, self.oof_lesion_dice_ = self._threshold(data, oof)
        self.seconds_ = time.perf_counter() - start
        return self

    def _folds(self, groups: np.ndarray) -> list[list[str]]:
        """The members' validation patients: patients with several slices dealt round-robin, then the
        slices that are their own group (no patient id), so each fold holds both kinds."""
        rng = np.random.default_rng(self.random_state)
        names = list(dict.fromkeys(groups))
        if len(names) < 2:
            raise TrainingDataError(f"the segmentation network needs slices of two or more patients; got {len(names)}")
        counts = {g: int(np.sum(groups == g)) for g in names}
        several = [g for g in names if counts[g] > 1]
        single = [g for g in names if counts[g] == 1]
        rng.shuffle(several)
        rng.shuffle(single)
        k = min(int(self.members), len(names))
        ordered = several + single
        return [ordered[i::k] for i in range(k)]

    def _targets(self, data: SegmentationData) -> tuple[np.ndarray, np.ndarray]:
        """The masks' shares of each cell of the decoder's output grid: (rows, g, g, 3) for the lungs'
        three classes and (rows, g, g) for the lesion, float16."""
        stride = int(self.output_stride)
        g = self.side_ // stride

        def shares(mask: np.ndarray) -> np.ndarray:
            return mask.reshape(len(mask), g, stride, g, stride).mean(axis=(2, 4), dtype=np.float32).astype(np.float16)
        lungs = np.stack([shares(data.lungs == c) for c in range(3)], axis=-1)
        return lungs, shares(data.lesion.astype(bool))

    def _train_member(self, data: SegmentationData, targets: tuple[np.ndarray, np.ndarray], train: np.ndarray,
                      validate: np.ndarray, seed: int) -> tuple[list[np.ndarray], dict]:
        import keras

        from feature_extractor.segmentation.network import decoder

        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        model = decoder(keras, self.map_shapes_, self.side_, int(self.width), int(self.output_stride))
        per_epoch = sum(min(int(self.per_patient), int(np.sum(data.groups[train] == g)))
                        for g in dict.fromkeys(data.groups[train]))
        steps = int(np.ceil(per_epoch / int(self.batch_size)))
        optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            float(self.learning_rate), int(self.epochs) * steps, alpha=0.05))
        step = _training_step(model, optimizer)
        best = {"score": -np.inf}
        for epoch in range(int(self.epochs)):
            for batch in self._batches(data, targets, train, rng):
                step(*batch)
            if epoch >= int(self.epochs) // 2 or epoch == int(self.epochs) - 1:
                score = self._validation(data, validate, model.get_weights())
                if score["score"] > best["score"]:
                    best = {**score, "epoch": epoch + 1, "weights": [w.copy() for w in model.get_weights()]}
        weights = best.pop("weights")
        return (_with_cut(weights, best["threshold"]) if self.cut_off == "member" else weights), best

    def _batches(self, data: SegmentationData, targets: tuple[np.ndarray, np.ndarray], train: np.ndarray,
                 rng: np.random.Generator):
        """One epoch's batches: at most per_patient slices of each patient, one random view of each."""
        chosen = []
        for g in dict.fromkeys(data.groups[train]):
            mine = train[data.groups[train] == g]
            chosen.append(rng.choice(mine, min(len(mine), int(self.per_patient)), replace=False))
        order = np.concatenate(chosen)
        rng.shuffle(order)
        for i in range(0, len(order), int(self.batch_size)):
            index = order[i:i + int(self.batch_size)]
            rows = data.rows(index, rng.integers(0, data.views, len(index)))
            yield ([m[rows] for m in data.maps], data.slices[rows][..., None], targets[0][rows], targets[1][rows],
                   data.has_lungs[index])

    def _validation(self, data: SegmentationData, validate: np.ndarray, weights: list[np.ndarray]) -> dict:
        """A member's score on its fold's slices (view 0): the lesion's Dice at its cut-off (a lesion called
        is lung: workflows/lesions/summary.py), plus the lungs' Dice where lungs were drawn."""
        p = self._predict(data, data.rows(validate), [weights])
        lungs = p[..., 1:3].sum(-1) > p[..., 0]
        lesion = data.lesion[data.rows(validate)].astype(bool)
        scores = np.array([dice(p[..., 3] >= t, lesion) for t in THRESHOLDS])
        k = int(np.argmax(np.convolve(np.pad(scores, 1, mode="edge"), np.ones(3) / 3, mode="valid")))
        drawn = data.has_lungs[validate]
        lung_dice = dice(lungs[drawn], data.lungs[data.rows(validate[drawn])] > 0) if drawn.any() else None
        lesion_dice = float(scores[k] if self.cut_off == "member" else scores.max())
        return {"score": lesion_dice + (lung_dice or 0.0), "lesion_dice": lesion_dice, "lung_dice": lung_dice,
                "threshold": float(THRESHOLDS[k])}

    def _threshold(self, data: SegmentationData, oof: dict) -> tuple[float, float]:
        """The cut-off on the members' mean and the out-of-fold maps' pooled lesion Dice there (network side)."""
        index = np.array(sorted(oof))
        p = np.stack([oof[i] for i in index])
        lesion = data.lesion[data.rows(index)].astype(bool)
        if self.cut_off == "member":
            return CUT, dice(p[..., 3] >= CUT, lesion)
        scores = [dice(p[..., 3] >= t, lesion) for t in THRESHOLDS]
        return float(THRESHOLDS[int(np.argmax(scores))]), float(max(scores))

    # -- predicting ------------------------------------------------------------------------
    def _predict(self, data: SegmentationData, rows: np.ndarray, members: Sequence[list[np.ndarray]]) -> np.ndarray:
        return self.predict_proba([m[rows] for m in data.maps], data.slices[rows], members)

    def predict_proba(self, maps: Sequence[np.ndarray], slices: np.ndarray,
                      members: Sequence[list[np.ndarray]] | None = None, batch: int = 32) -> np.ndarray:
        """(n, side, side, 4) probabilities (network.OUTPUTS) of slices' maps and grey levels, the mean of
        ``members`` (default: all of this ensemble's), in Keras."""
        import keras

        from feature_extractor.segmentation.network import decoder, upsampled_probabilities

        members = self.members_ if members is None else members
        nets = []
        for weights in members:
            net = decoder(keras, self.map_shapes_, self.side_, int(self.width), int(self.output_stride))
            net.set_weights(weights)
            nets.append(net)
        out = []
        for i in range(0, len(slices), batch):
            x = [np.asarray(m[i:i + batch], np.float32) for m in maps] + \
                [np.asarray(slices[i:i + batch], np.float32)[..., None]]
            out.append(np.mean([np.asarray(upsampled_probabilities(keras, net(x, training=False), int(self.output_stride)))
                                for net in nets], axis=0))
        return np.concatenate(out) if out else np.zeros((0, self.side_, self.side_, 4), np.float32)

    def member_for(self, group: str | None) -> list[list[np.ndarray]]:
        """The members to map a slice of ``group`` with: the one that did not see that patient (for a
        training slice, out of fold), else all of them."""
        check_is_fitted(self, "members_")
        k = self.fold_of_group_.get(group) if group is not None else None
        return self.members_ if k is None else [self.members_[k]]

    def describe(self) -> dict:
        """The model card's record."""
        check_is_fitted(self, "members_")
        return {"architecture": "decoder with skip connections on the frozen backbone's maps at strides 4-32 and "
                                "the slice (feature_extractor/segmentation/network.py)",
                "params": self.get_params(), "members": len(self.members_),
                "ensemble": "patient-grouped folds, each member validated on its fold's patients (best epoch)",
                "validation": [{k: v for k, v in r.items() if k != "score"} for r in self.validation_],
                "lesion_threshold": self.threshold_, "cut_off": self.cut_off,
                "oof_lesion_dice_at_network_side": self.oof_lesion_dice_,
                "training_seconds": round(self.seconds_, 1)}


def _with_cut(weights: list[np.ndarray], cut: float) -> list[np.ndarray]:
    """A member's weights with its lesion cut-off folded into the last layer's lesion bias: its probability
    crosses CUT where it crossed ``cut``."""
    weights = [w.copy() for w in weights]
    bias = weights[-1]
    if bias.shape != (4,):
        raise RuntimeError(f"the decoder's last weights should be its 4 logits' bias, not {bias.shape}")
    bias[3] += np.log(CUT / (1 - CUT)) - np.log(cut / (1 - cut))
    return weights


def _training_step(model, optimizer):
    """One optimizer step on a batch (see the module docstring's loss), compiled once."""
    import tensorflow as tf

    def soft_dice(p, t, weight):
        weight = tf.reshape(weight, (-1, 1, 1))
        overlap = tf.reduce_sum(p * t * weight)
        return 1 - (2 * overlap + 1) / (tf.reduce_sum(p * weight) + tf.reduce_sum(t * weight) + 1)

    @tf.function(reduce_retracing=True)
    def step(maps, slices, lungs, lesion, has_lungs):
        with tf.GradientTape() as tape:
            logits = model(list(maps) + [tf.cast(slices, tf.float32)], training=True)
            drawn = tf.cast(has_lungs, tf.float32)
            truth = tf.cast(lungs, tf.float32)   # each cell's shares of outside, image-left and image-right lung
            ce = -tf.reduce_sum(truth * tf.nn.log_softmax(logits[..., :3]), axis=-1)
            lung_ce = tf.reduce_sum(tf.reduce_mean(ce, axis=(1, 2)) * drawn) / (tf.reduce_sum(drawn) + 1e-6)
            p = tf.nn.softmax(logits[..., :3])
            lung_dice = (soft_dice(p[..., 1], truth[..., 1], drawn) + soft_dice(p[..., 2], truth[..., 2], drawn)) / 2
            target = tf.cast(lesion, tf.float32)
            bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(target, logits[..., 3]))
            lesion_dice = soft_dice(tf.sigmoid(logits[..., 3]), target, tf.ones_like(drawn))
            loss = lung_ce + lung_dice + bce + lesion_dice
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def run(maps, slices, lungs, lesion, has_lungs):
        return step([tf.constant(np.asarray(m, np.float32)) for m in maps], tf.constant(slices),
                    tf.constant(lungs), tf.constant(lesion), tf.constant(has_lungs))
    return run
