"""The lungs and lesion segmentation network: the frozen backbone's maps at strides 4 to 32
(backbones.map_model) feed a small trained decoder with skip connections (a U-Net's upward path,
Ronneberger et al. 2015), which also sees the slice itself. Per pixel of the network's square it gives
four logits: background, the image-left lung, the image-right lung (a softmax over the three: the lungs
as radiologists draw them, lesions inside) and lesion (a sigmoid). Which image side is the patient's
right is the slice's business (slices.py), not the network's: it is trained with flipped copies whose
labels swap, so it reads sides from where a lung lies, never from anatomy.

Several decoders (trained from other random starts on other patients: classifiers/estimators/segmenter.py)
are averaged in one graph, :func:`segmentation_model`, which runs through the same runtimes as the
backbones (ONNX Runtime by default, exported once: runtimes/inference.py).
"""
from __future__ import annotations

from typing import Any, Sequence

OUTPUTS = ("background", "image-left lung", "image-right lung", "lesion")
LUNG_CHANNELS = 3   # the softmax's channels; the lesion's logit follows them


def decoder(keras: Any, map_shapes: Sequence[tuple[int, int, int]], side: int, width: int, output_stride: int,
            name: str = "decoder"):
    """A decoder from the backbone's four maps (shallow to deep) and the slice ((side, side, 1), the
    backbone's preprocessed grey levels) to 4 logits per pixel at ``output_stride`` (1, 2 or 4): a
    (side / output_stride)-square grid, trained there against the masks' shares of each of its cells
    (estimators/segmenter.py) and resized to the side for the maps (:func:`upsampled_probabilities`).
    ``width``: the channels at stride 4 (twice, three and four times that deeper)."""
    layers = keras.layers

    def block(x, channels: int, kernel: int = 3):
        # Batch statistics that follow training within a few hundred steps (keras' default, 0.99, lags them:
        # the maps a short training run makes would then not be those it validated).
        x = layers.Conv2D(channels, kernel, padding="same", use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))

    maps = [keras.Input(shape, name=f"map_s{4 * 2 ** k}") for k, shape in enumerate(map_shapes)]
    image = keras.Input((side, side, 1), name="slice")
    x = block(maps[3], 4 * width, 1)
    for k, channels in ((2, 3 * width), (1, 2 * width), (0, width)):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = block(layers.Concatenate()([x, block(maps[k], channels, 1)]), channels)
    if output_stride == 4:  # the slice joins at stride 4
        x = block(layers.Concatenate()([x, layers.AveragePooling2D(4)(image)]), width)
    else:  # finer steps, each with the slice at its scale
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = block(layers.Concatenate()([x, layers.AveragePooling2D(2)(image)]), max(8, width // 2))
        if output_stride == 1:
            x = layers.UpSampling2D(2, interpolation="bilinear")(x)
            x = block(layers.Concatenate()([x, image]), max(8, width // 4))
    logits = layers.Conv2D(len(OUTPUTS), 1, name="logits")(x)
    return keras.Model(maps + [image], logits, name=name)


def probabilities(keras: Any, logits):
    """(..., 4) logits as (..., 4) probabilities: the lungs' softmax, then the lesion's sigmoid."""
    ops = keras.ops
    return ops.concatenate([ops.softmax(logits[..., :LUNG_CHANNELS], axis=-1),
                            ops.sigmoid(logits[..., LUNG_CHANNELS:])], axis=-1)


def upsampled_probabilities(keras: Any, logits, output_stride: int):
    """A decoder's logits resized (bilinear) to the network's side, as probabilities."""
    if output_stride > 1:
        logits = keras.layers.UpSampling2D(output_stride, interpolation="bilinear")(logits)
    return probabilities(keras, logits)


def segmentation_model(keras: Any, encoder, members: Sequence[Sequence[Any]], width: int, output_stride: int):
    """The whole network for inference: the backbone's preprocessed (side, side, 3) slice in, the mean of
    the ``members``' probabilities (each a list of decoder weights) out, (side, side, 4)."""
    side = int(encoder.input.shape[1])
    shapes = [tuple(int(v) for v in out.shape[1:]) for out in encoder.outputs]
    x = encoder.input
    maps = encoder(x)
    image = keras.layers.Lambda(lambda t: t[..., :1], name="grey")(x)
    outs = []
    for k, weights in enumerate(members):
        net = decoder(keras, shapes, side, width, output_stride, name=f"decoder_{k}")
        net.set_weights(list(weights))
        outs.append(upsampled_probabilities(keras, net(list(maps) + [image]), output_stride))
    mean = outs[0] if len(outs) == 1 else keras.layers.Average()(outs)
    return keras.Model(x, mean, name="segmentation")
