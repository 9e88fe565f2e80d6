"""Registry of frozen ImageNet CNNs from keras.applications.

Each entry knows its constructor, input size, ``preprocess_input``, feature dimension, the
file name keras caches its ImageNet weights under, and the layers whose maps feed the lungs and
lesion segmentation network (one per stride 4, 8, 16 and 32: feature_extractor/segmentation/).
Specs are plain data so listing backbones does not import TensorFlow; :func:`build_model`
imports it when a CNN must run. Pooled features are the global-average-pooled output of the last
conv block (include_top=False); segmentation maps are those layers' outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from covidct_core.errors import UnknownBackboneError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    module: str                 # keras.applications.<module>: holds preprocess_input
    constructor: str            # keras.applications.<module>.<constructor>
    input_size: tuple[int, int]  # (height, width)
    feature_dim: int
    imagenet_file: str          # keras' cache file name for include_top=False weights
    kwargs: dict[str, Any] = field(default_factory=dict)
    map_layers: tuple[str, ...] = ()  # the segmentation network's inputs, at strides 4, 8, 16 and 32

    @property
    def preprocessing(self) -> str:
        return f"keras.applications.{self.module}.preprocess_input"


def _spec(name, module, constructor, size, dim, fname, maps=(), **kwargs) -> BackboneSpec:
    return BackboneSpec(name, module, constructor, (size, size), dim, fname, kwargs, tuple(maps))


_TF_NOTOP = "_weights_tf_dim_ordering_tf_kernels_notop.h5"

BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    _spec("vgg16", "vgg16", "VGG16", 224, 512, "vgg16" + _TF_NOTOP,
          maps=("block3_conv3", "block4_conv3", "block5_conv3", "block5_pool")),
    _spec("vgg19", "vgg19", "VGG19", 224, 512, "vgg19" + _TF_NOTOP,
          maps=("block3_conv4", "block4_conv4", "block5_conv4", "block5_pool")),
    _spec("resnet50", "resnet", "ResNet50", 224, 2048, "resnet50" + _TF_NOTOP,
          maps=("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")),
    _spec("resnet101", "resnet", "ResNet101", 224, 2048, "resnet101" + _TF_NOTOP,
          maps=("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out")),
    _spec("densenet121", "densenet", "DenseNet121", 224, 1024, "densenet121" + _TF_NOTOP,
          maps=("pool2_conv", "pool3_conv", "pool4_conv", "relu")),
    _spec("densenet169", "densenet", "DenseNet169", 224, 1664, "densenet169" + _TF_NOTOP,
          maps=("pool2_conv", "pool3_conv", "pool4_conv", "relu")),
    _spec("inceptionv3", "inception_v3", "InceptionV3", 299, 2048, "inception_v3" + _TF_NOTOP,
          maps=("activation_4", "mixed2", "mixed7", "mixed10")),
    _spec("xception", "xception", "Xception", 299, 2048, "xception" + _TF_NOTOP,
          maps=("block3_sepconv2_bn", "block4_sepconv2_bn", "block13_sepconv2_bn", "block14_sepconv2_act")),
    _spec("efficientnetb0", "efficientnet", "EfficientNetB0", 224, 1280, "efficientnetb0_notop.h5",
          maps=("block2b_add", "block3b_add", "block5c_add", "top_activation")),
    _spec("mobilenet", "mobilenet", "MobileNet", 224, 1024, "mobilenet_1_0_224_tf_no_top.h5",
          maps=("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"), alpha=1.0),
    # MobileNet at width 0.25: small and fast; its keras file is real and works offline
    # from ../shared/keras (see README), which makes it the pretrained backbone of the tests.
    _spec("mobilenet025", "mobilenet", "MobileNet", 224, 256, "mobilenet_2_5_224_tf_no_top.h5",
          maps=("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"), alpha=0.25),
    # The segmentation network's default. Its maps are the residual stream's (the inverted bottlenecks'
    # outputs): every later layer is computed from them, at a sixth of the expanded layers' width.
    _spec("mobilenetv2", "mobilenet_v2", "MobileNetV2", 224, 1280,
          "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
          maps=("block_2_add", "block_5_add", "block_12_add", "block_16_project_BN"), alpha=1.0),
)}


def get_backbone(name: str) -> BackboneSpec:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in BACKBONES:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[key]


# --precision value -> keras dtype policy (compute dtype; weights stay float32)
KERAS_DTYPE_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "mixed": "mixed_float16"}


def build_model(spec: BackboneSpec, weights: str | None,
                input_size: tuple[int, int] | None = None, pooling: str = "avg",
                precision: str = "fp32", maps: bool = False) -> Any:
    """Build the frozen keras model. ``weights``: "imagenet", a file, or None.

    ``pooling``: "avg" (global average of the last conv block), "avgmax" (average and max
    of it, concatenated), "multiscale" (global average of the last activation at each of the
    last three spatial resolutions, concatenated). ``precision``: "fp32", "bf16" (bfloat16
    compute with float32 weights: CPUs with AVX512-BF16/AMX) or "mixed" (float16 compute: GPUs).
    ``input_size`` overrides the spec's size (small inputs make fast tests). ``maps``: the
    segmentation network's inputs instead (see :func:`map_model`); ``pooling`` is unused.
    """
    from .runtimes.keras_backend import keras_module

    keras = keras_module()  # quiet TF import and GPU set-up before keras touches the devices

    height, width = input_size or spec.input_size
    constructor = getattr(keras.applications, spec.constructor)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(KERAS_DTYPE_POLICY[precision])  # for this build only
    try:
        model = constructor(include_top=False, weights=weights, input_shape=(height, width, 3),
                            pooling="avg" if pooling == "avg" and not maps else None, **spec.kwargs)
        if maps:
            model = map_model(keras, model, spec)
        elif pooling != "avg":
            maps_ = [model.output] if pooling == "avgmax" else _last_per_resolution(model, 3)
            pooled = [keras.layers.GlobalAveragePooling2D()(m) for m in maps_]
            if pooling == "avgmax":
                pooled.append(keras.layers.GlobalMaxPooling2D()(model.output))
            model = keras.Model(model.input, keras.layers.Concatenate()(pooled),
                                name=f"{spec.name}_{pooling}")
    finally:
        keras.config.set_dtype_policy(previous)
    model.trainable = False
    return model


MAP_STRIDES = (4, 8, 16, 32)  # of BackboneSpec.map_layers


def map_model(keras: Any, model: Any, spec: BackboneSpec) -> Any:
    """The backbone's map layers (BackboneSpec.map_layers) as outputs, each at exactly its stride's size
    (a side / stride square: bilinear resampling where a backbone's padding makes it odd, e.g. Xception)."""
    from covidct_core.errors import SettingsError

    if not spec.map_layers:
        able = ", ".join(sorted(n for n, s in BACKBONES.items() if s.map_layers))
        raise SettingsError(f"{spec.name} has no segmentation layers declared; lung and lesion maps work with {able}")
    side = int(model.input.shape[1])
    outputs = []
    for name, stride in zip(spec.map_layers, MAP_STRIDES):
        out = model.get_layer(name).output
        if int(out.shape[1]) != side // stride:
            out = keras.layers.Resizing(side // stride, side // stride, interpolation="bilinear")(out)
        outputs.append(out)
    return keras.Model(model.input, outputs, name=f"{spec.name}_maps")


def _last_per_resolution(model: Any, n: int) -> list:
    """Outputs of the last layer at each of the last ``n`` spatial resolutions.

    Padding layers are skipped: their odd sizes are not a stage of the network.
    """
    last: dict[int, Any] = {}
    for layer in model.layers:
        if type(layer).__name__ in ("ZeroPadding2D", "Cropping2D", "InputLayer"):
            continue
        shape = layer.output.shape
        if len(shape) == 4:
            last[shape[1]] = layer.output
    return list(last.values())[-n:]


# keras.applications' preprocess_input by module: the arithmetic of keras'
# imagenet_utils._preprocess_numpy_input (channels last) in NumPy, so that a runtime other than
# TensorFlow prepares a batch without starting TensorFlow (5-6 s). tests/test_backbones_weights.py
# compares each with keras' own.
_PREPROCESS_MODE = {"vgg16": "caffe", "vgg19": "caffe", "resnet": "caffe", "densenet": "torch",
                    "inception_v3": "tf", "xception": "tf", "mobilenet": "tf", "mobilenet_v2": "tf",
                    "efficientnet": "none"}  # EfficientNet's preprocessing is inside the model
_CAFFE_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess_function(spec: BackboneSpec) -> Callable:
    """The backbone's preprocess_input, for float or uint8 (N, H, W, 3) batches in RGB."""
    mode = _PREPROCESS_MODE[spec.module]
    return lambda x: _preprocess(x, mode)


def _preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if mode == "none":
        return x
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:
        x = x[..., ::-1]  # RGB -> BGR
        mean, std = _CAFFE_MEAN, None
    for c in range(3):
        x[..., c] -= mean[c]
    if std is not None:
        for c in range(3):
            x[..., c] /= std[c]
    return x
