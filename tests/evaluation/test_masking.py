"""Tests of the gradient-masking checks on tiny models built here (untrained, seeded).

Each flag must fire on a model built to show the symptom (quantised input,
noise at inference, softmax output, hand-made attack results) and stay silent
on a plain deterministic logits model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.evaluation import masking

SHAPE = (8, 8, 1)
NUM_CLASSES = 3


class Quantize(keras.layers.Layer):
    """Rounds pixels to 16 levels: `tf.round` has no gradient (a masking layer)."""

    def call(self, x):
        return tf.round(x * 16) / 16


class AlwaysNoisy(keras.layers.Layer):
    """Adds Gaussian noise whatever `training` is: random at inference."""

    def call(self, x):
        return x + tf.random.normal(tf.shape(x), stddev=0.1)


def _model(*front, activation=None):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            *front,
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, activation=activation),
        ]
    )


def _model_fn(model):
    return lambda x: model(x, training=False)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, *SHAPE)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, 8)
    return x, y


@pytest.fixture(scope="module")
def plain():
    return _model_fn(_model())


def _checks(flags):
    return [f["check"] for f in flags]


def test_plain_model_raises_no_flag(plain, batch):
    x, y = batch
    assert masking.zero_gradient_fraction(plain, x, y) == 0.0
    assert masking.output_randomness(plain, x) == 0.0
    assert not masking.looks_like_probabilities(plain(x))
    assert masking.check_gradient_masking(plain, x, y) == []


def test_quantizing_layer_has_zero_gradients(batch):
    x, y = batch
    quantized = _model_fn(_model(Quantize()))
    assert masking.zero_gradient_fraction(quantized, x, y) == 1.0
    flags = masking.check_gradient_masking(quantized, x, y)
    assert _checks(flags) == ["zero_gradients"]
    assert "100.0% of 8 examples" in flags[0]["message"]
    assert "BPDA" in flags[0]["message"]


def test_sign_layer_has_zero_gradients(batch):
    # tf.sign has a registered gradient, equal to zero: caught as well.
    x, y = batch
    signed = _model_fn(_model(keras.layers.Lambda(lambda t: tf.sign(t - 0.5))))
    assert masking.zero_gradient_fraction(signed, x, y) == 1.0


def test_zero_gradient_threshold_and_atol(plain, batch):
    x, y = batch
    assert masking.zero_gradient_fraction(plain, x, y, atol=np.inf) == 1.0

    def half_masked(t):  # The last four examples get no gradient.
        return plain(tf.concat([t[:4], tf.stop_gradient(t[4:])], axis=0))

    assert masking.zero_gradient_fraction(half_masked, x, y) == 0.5
    assert masking.check_gradient_masking(half_masked, x, y, zero_grad_threshold=0.5) == []
    assert _checks(masking.check_gradient_masking(half_masked, x, y)) == ["zero_gradients"]


def test_random_layer_at_inference_is_flagged(batch):
    x, y = batch
    noisy = _model_fn(_model(AlwaysNoisy()))
    assert masking.output_randomness(noisy, x) > 1e-3
    flags = masking.check_gradient_masking(noisy, x, y)
    assert _checks(flags) == ["randomized_outputs"]
    assert "EOT" in flags[0]["message"]


def test_dropout_off_at_inference_is_not_flagged(batch):
    # Dropout is random only with training=True; the caller binds training=False.
    x, y = batch
    model = _model(keras.layers.Dropout(0.5))
    assert masking.output_randomness(_model_fn(model), x, trials=3) == 0.0
    assert masking.output_randomness(lambda t: model(t, training=True), x) > 0


def test_randomized_message_states_the_measured_spread(plain, batch):
    x, y = batch
    calls = []

    def drifting(t):  # Each call shifts the logits by 0.25 more: a known spread.
        calls.append(None)
        return plain(t) + 0.25 * len(calls)

    flags = masking.check_gradient_masking(drifting, x, y)
    assert _checks(flags) == ["randomized_outputs"]
    assert "up to 0.25 " in flags[0]["message"]


def test_softmax_outputs_are_flagged(plain, batch):
    x, y = batch
    softmax = _model_fn(_model(activation="softmax"))
    assert masking.looks_like_probabilities(softmax(x))
    flags = masking.check_gradient_masking(softmax, x, y)
    assert _checks(flags) == ["probability_outputs"]
    outputs = np.asarray(softmax(x), np.float64)
    assert f"[{outputs.min():.3g}, {outputs.max():.3g}]" in flags[0]["message"]
    assert "logits" in flags[0]["message"]


def test_looks_like_probabilities_edge_cases():
    assert masking.looks_like_probabilities([[0.2, 0.8], [1.0, 0.0]])
    assert not masking.looks_like_probabilities([[0.2, 0.7]])  # Sums to 0.9.
    assert not masking.looks_like_probabilities([[1.5, -0.5]])  # Sums to 1, out of range.
    assert not masking.looks_like_probabilities(np.zeros((0, 3)))
    assert masking.looks_like_probabilities([[0.2, 0.7]], atol=0.2)


def test_black_box_beats_white_box_from_accuracies(plain, batch):
    x, y = batch
    fooled = {"pgd": 0.40, "apgd-ce": 0.35, "square": 0.12}
    flags = masking.check_gradient_masking(plain, x, y, attack_accuracy=fooled)
    assert _checks(flags) == ["black_box_beats_white_box"]
    message = flags[0]["message"]
    assert "square leaves 12.0%" in message and "apgd-ce, 35.0%" in message
    assert "23.0 points" in message

    # Within the margin, or the black box no better than the white box: silent.
    ok = {"pgd": 0.40, "square": 0.41}
    assert masking.check_gradient_masking(plain, x, y, attack_accuracy=ok) == []
    near = {"pgd": 0.40, "square": 0.39}
    assert masking.check_gradient_masking(
        plain, x, y, attack_accuracy=near, black_box_margin=0.02
    ) == []
    # Another black-box name; nothing to compare with when one side is missing.
    transfer = {"pgd": 0.40, "pgd@other": 0.10}
    flags = masking.check_gradient_masking(
        plain, x, y, attack_accuracy=transfer, black_box=("pgd@other",)
    )
    assert _checks(flags) == ["black_box_beats_white_box"]
    assert masking.check_gradient_masking(plain, x, y, attack_accuracy={"pgd": 0.4}) == []


def test_black_box_only_fooled_counts_examples():
    pgd = np.array([True, True, True, False, True])
    apgd = np.array([True, True, False, False, True])
    square = np.array([False, True, True, False, False])
    # Survive both white-box attacks: 0, 1, 4; of those square fools 0 and 4.
    assert masking.black_box_only_fooled({"pgd": pgd, "apgd": apgd}, {"square": square}) == 2
    assert masking.black_box_only_fooled([pgd, apgd], [square]) == 2
    assert masking.black_box_only_fooled(np.stack([pgd, apgd]), square) == 2
    assert masking.black_box_only_fooled([pgd], [pgd]) == 0
    with pytest.raises(ValueError, match="at least one attack"):
        masking.black_box_only_fooled({}, [square])
    with pytest.raises(ValueError, match="5 and 3 examples"):
        masking.black_box_only_fooled([pgd], [square[:3]])
    with pytest.raises(ValueError, match=r"lengths \[3, 5\]"):
        masking.black_box_only_fooled([pgd, apgd[:3]], [square])


def test_black_box_check_prefers_per_example(plain, batch):
    x, y = batch
    per_example = {
        "pgd": np.array([True, True, False, True]),
        "square": np.array([False, True, False, True]),
    }
    # The accuracies alone (50% each) would not fire; the per-example form does.
    flags = masking.check_gradient_masking(
        plain, x, y, attack_accuracy={"pgd": 0.5, "square": 0.5}, per_example=per_example
    )
    assert _checks(flags) == ["black_box_beats_white_box"]
    assert "1 of 4 examples" in flags[0]["message"]
    same = {"pgd": per_example["pgd"], "square": per_example["pgd"]}
    assert masking.check_gradient_masking(plain, x, y, per_example=same) == []


def test_input_errors(plain, batch):
    x, y = batch
    with pytest.raises(ValueError, match="8 images and 7 labels"):
        masking.zero_gradient_fraction(plain, x, y[:7])
    with pytest.raises(ValueError, match="empty batch"):
        masking.zero_gradient_fraction(plain, x[:0], y[:0])
    with pytest.raises(ValueError, match="trials=1"):
        masking.output_randomness(plain, x, trials=1)
