"""CIFAR-10 architectures: ResNet-20 (He et al., 2016, §4.2) and a small CNN for CPUs."""

import keras
from keras import layers

from at2l_tf.models.registry import register


@register("cifar10_small", "cifar10", "conv32x2-pool-conv64x2-pool-dense256; fast CPU baseline")
def cifar10_small(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cifar10_small")


def _basic_block(x, filters, strides):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


@register("cifar10_resnet20", "cifar10", "ResNet-20: 3 stages x 3 basic blocks (16/32/64 filters), BN")
def cifar10_resnet20(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cifar10_resnet20")
