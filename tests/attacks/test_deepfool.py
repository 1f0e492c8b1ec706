"""Properties of multi-class DeepFool on a small MNIST CNN."""

import numpy as np
import pytest

from at2l_tf.attacks import deepfool


def test_batch_equals_concatenated_halves(model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    whole = np.asarray(deepfool(model_fn, x, y))
    halves = np.concatenate(
        [np.asarray(deepfool(model_fn, x[:4], y[:4])), np.asarray(deepfool(model_fn, x[4:], y[4:]))]
    )
    np.testing.assert_allclose(whole, halves, atol=1e-5, rtol=0)


def test_misclassified_examples_are_returned_unchanged(model_fn, clean_batch):
    # Labels the model does not predict: every example is already "fooled".
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    np.testing.assert_array_equal(np.asarray(deepfool(model_fn, x, (y + 1) % 10)), x)


def test_two_candidates_still_fool(model_fn, clean_batch, predict):
    # Only the runner-up class is a target: the cheapest configuration.
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    assert np.mean(predict(deepfool(model_fn, x, y, num_candidates=2)) != y) >= 0.9


@pytest.mark.parametrize(
    "params, message",
    [
        ({"num_candidates": 1}, r"num_candidates=1"),
        ({"overshoot": -0.1}, r"overshoot=-0\.1"),
        ({"max_iter": 0}, r"max_iter=0"),
        ({"clip_min": 1.0, "clip_max": 0.0}, r"clip_min=1\.0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(params, message, model_fn, clean_batch):
    x, y = clean_batch
    with pytest.raises(ValueError, match=message):
        deepfool(model_fn, x, y, **params)
