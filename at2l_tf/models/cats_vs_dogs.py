"""Cats vs Dogs architecture: a four-stage CNN ending in global average pooling,
so it accepts any square image size the data pipeline resizes to (default 64)."""

import keras
from keras import layers

from at2l_tf.models.registry import register


@register("cats_vs_dogs_cnn", "cats_vs_dogs", "conv32-64-128-128 with pooling, GAP, dense128; any image size")
def cats_vs_dogs_cnn(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for filters in (32, 64, 128, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cats_vs_dogs_cnn")
