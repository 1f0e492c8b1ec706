"""Properties of the Carlini & Wagner L2 attack on a small MNIST CNN."""

import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks import carlini_wagner_l2


def test_returns_x_when_no_adversarial_is_found(clean_batch):
    # Logits that ignore the input: nothing can be fooled, so x comes back as is.
    x, y = clean_batch[0][:4], clean_batch[1][:4]

    def constant_model(images):
        flat = tf.reshape(images, [tf.shape(images)[0], -1])
        return 0.0 * tf.reduce_sum(flat, axis=1, keepdims=True) + tf.one_hot(y, 10)

    x_adv = carlini_wagner_l2(constant_model, x, y, binary_search_steps=2, max_iterations=5)
    np.testing.assert_array_equal(np.asarray(x_adv), x)


def test_confidence_is_reached_by_every_adversarial(model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    kappa = 2.0
    x_adv = carlini_wagner_l2(model_fn, x, y, confidence=kappa)
    logits = np.array(model_fn(x_adv))  # a writable copy
    rows = np.arange(len(y))
    label_logit = logits[rows, y]
    logits[rows, y] = -np.inf
    margin = logits.max(axis=1) - label_logit
    changed = np.any(np.asarray(x_adv) != x, axis=(1, 2, 3))
    assert changed.mean() >= 0.9
    # Each returned adversarial is one the search accepted: margin > κ (up to
    # float noise of re-evaluating the model).
    assert np.all(margin[changed] > kappa - 1e-3)


def test_targeted_reaches_target(model_fn, clean_batch, predict):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    target = (y + 1) % 10
    x_adv = carlini_wagner_l2(model_fn, x, target, targeted=True)
    assert np.mean(predict(x_adv) == target) >= 0.9


@pytest.mark.parametrize(
    "params, message",
    [
        ({"confidence": -1.0}, r"confidence=-1\.0"),
        ({"binary_search_steps": 0}, r"binary_search_steps=0"),
        ({"max_iterations": 0}, r"max_iterations=0"),
        ({"learning_rate": 0.0}, r"learning_rate=0\.0"),
        ({"initial_const": -1.0}, r"initial_const=-1\.0"),
        ({"clip_min": 1.0, "clip_max": 0.0}, r"clip_min=1\.0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(params, message, model_fn, clean_batch):
    x, y = clean_batch
    with pytest.raises(ValueError, match=message):
        carlini_wagner_l2(model_fn, x, y, **params)


def test_targeted_without_labels_raises(model_fn, clean_batch):
    with pytest.raises(ValueError, match="y=None"):
        carlini_wagner_l2(model_fn, clean_batch[0], targeted=True)
