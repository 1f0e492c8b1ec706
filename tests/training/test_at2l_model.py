import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks, data, defenses, losses, models
from at2l_tf.training import AT2LModel
from at2l_tf.training.triplet_regularizer import TripletRegularizer


def _batch(n=8, offset=0):
    x, y = data.load_mnist_arrays("validation")
    return (x[offset : offset + n].astype("float32") / 255.0, y[offset : offset + n])


def _model(objective, lambda2=None, lambda1=1.0, seed=0, weights=None, num_classes=10):
    keras.utils.set_random_seed(seed)
    clf = models.get_model("mnist_small", num_classes=num_classes)
    if weights is not None:
        clf.set_weights(weights)
    model = AT2LModel(
        clf,
        objective=objective,
        attack="fgsm",
        attack_params={"eps": 0.3},
        lambda1=lambda1,
        lambda2=lambda2,
        margin=0.5,
        seed=seed,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def _ce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy()


def test_at_loss_is_eq1_by_hand():
    x, y = _batch()
    model = _model("at", lambda1=0.7)
    total, _ = model._compute_losses((tf.constant(x), tf.constant(y)), training=False)
    clf = model.classifier
    x_adv = attacks.fgsm(lambda z: clf(z, training=False), tf.constant(x), tf.constant(y), eps=0.3)
    expected = (_ce(y, clf(x)).sum() + 0.7 * _ce(y, clf(x_adv)).sum()) / ((1 + 0.7) * len(y))
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_lambda2_zero_reproduces_eq1_exactly():
    x, y = _batch()
    at = _model("at")
    at2l = _model("at2l", lambda2=0.0, weights=at.classifier.get_weights())
    data_ = (tf.constant(x), tf.constant(y))
    assert float(at._compute_losses(data_, training=False)[0]) == float(
        at2l._compute_losses(data_, training=False)[0]
    )


def test_at2l_adds_the_triplet_hinge_through_add_loss():
    # Two examples of different labels: each one's only negative is the other.
    x, y = _batch(n=2)
    y = np.array([0, 1])
    model = _model("at2l", lambda2=0.8, num_classes=2)
    total, out = model._compute_losses((tf.constant(x), tf.constant(y)), training=False)
    assert len(model.triplet.losses) == 1  # The λ2 term went through add_loss.
    clf = model.classifier
    logits = clf(x)
    x_adv = attacks.fgsm(lambda z: clf(z, training=False), tf.constant(x), tf.constant(y), eps=0.3)
    adv_logits = clf(x_adv)
    hinge = losses.triplet_hinge(adv_logits, logits, tf.gather(logits, [1, 0]), margin=0.5).numpy()
    eq1 = (_ce(y, logits).sum() + _ce(y, adv_logits).sum()) / (2 * 2)
    np.testing.assert_allclose(float(total), eq1 + 0.8 * hinge.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["hinge"].numpy(), hinge, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "objective, names",
    [
        ("none", {"loss", "ce_clean", "acc"}),
        ("at", {"loss", "ce_clean", "ce_adv", "acc", "adv_acc"}),
        ("at2l", {"loss", "ce_clean", "ce_adv", "triplet", "acc", "adv_acc"}),
        ("tr", {"loss", "ce_clean", "ce_adv", "triplet", "acc", "adv_acc"}),
    ],
)
def test_fit_and_evaluate_report_the_metrics_of_each_objective(objective, names):
    x, y = _batch(64)
    model = _model(objective)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    history = model.fit(ds, epochs=1, verbose=0, validation_data=ds)
    assert set(history.history) == names | {f"val_{n}" for n in names}
    assert all(np.isfinite(v[0]) for v in history.history.values())
    result = model.evaluate(ds, verbose=0, return_dict=True)
    assert set(result) == names


def test_training_reduces_the_loss_of_the_adversarial_examples():
    x, y = _batch(128)
    model = _model("at2l")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    before = model.evaluate(ds, verbose=0, return_dict=True)
    model.fit(ds, epochs=3, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)
    assert after["ce_adv"] < before["ce_adv"] and after["loss"] < before["loss"]


def test_bad_arguments_are_rejected():
    clf = models.get_model("mnist_small")
    with pytest.raises(ValueError, match="objective='adv'"):
        AT2LModel(clf, objective="adv")
    with pytest.raises(ValueError, match="attack='cw'"):
        AT2LModel(clf, attack="cw")
    with pytest.raises(ValueError, match="lambda1=-1"):
        AT2LModel(clf, lambda1=-1)
    with pytest.raises(ValueError, match="lambda2=-0.5"):
        AT2LModel(clf, lambda2=-0.5)


def test_the_old_keyword_names_warn_or_say_what_replaced_them():
    clf = models.get_model("mnist_small")
    with pytest.warns(DeprecationWarning, match="use objective="):
        model = AT2LModel(clf, defense="trades", beta=6.0)
    assert model.objective_name == "trades"
    with pytest.raises(TypeError, match="use triplet_distance=, received norm='l2'"):
        AT2LModel(clf, norm="l2")


def test_get_config_round_trips():
    keras.utils.set_random_seed(0)
    model = AT2LModel(
        models.get_model("mnist_small"),
        objective="tr",
        attack="pgd",
        attack_params={"eps": 0.2, "steps": 3, "step_size": 0.05},
        lambda1=0.3,
        lambda2=0.25,
        margin=1.5,
        triplet_distance="l2",
        seed=11,
    )
    clone = AT2LModel.from_config(model.get_config())
    fields = ("objective_name", "attack", "attack_params", "lambda1", "lambda2", "margin", "seed")
    got = {f: getattr(clone, f) for f in fields}
    assert got == {
        "objective_name": "tr",
        "attack": "pgd",
        "attack_params": {"eps": 0.2, "steps": 3, "step_size": 0.05},
        "lambda1": 0.3,
        "lambda2": 0.25,
        "margin": 1.5,
        "seed": 11,
    }
    assert (clone.triplet.distance, clone.triplet.seed, clone.triplet.num_classes) == ("l2", 11, 10)
    assert clone._attack_fn.bound_params == {"eps": 0.2, "steps": 3, "step_size": 0.05}
    x, _ = _batch(2)
    assert clone(x).shape == (2, 10)


@functools.lru_cache(maxsize=None)
def _two_replicas():
    # One strategy for every test of this file: a second MirroredStrategy over the
    # same devices in one process restarts the collective instance keys, and
    # TensorFlow's runtime, which remembers each key's shape, then aborts a
    # collective of another shape ("Shape mismatch in the collective instance").
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def test_one_step_under_two_replica_mirrored_strategy_matches_one_device():
    # Global batch of 4 split 2 + 2; the second half repeats the first, so the
    # in-replica negatives have the same logits as the single-device ones.
    x, y = _batch(2)
    x = np.concatenate([x, x])
    y = np.array([3, 7, 3, 7])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    base = _model("at2l", lambda2=1.0)
    w0 = base.classifier.get_weights()

    single = _model("at2l", lambda2=1.0, weights=w0)
    h1 = single.fit(ds, epochs=1, verbose=0).history

    strategy = _two_replicas()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = _model("at2l", lambda2=1.0, weights=w0)
    h2 = mirrored.fit(ds, epochs=1, verbose=0).history

    for key in ("loss", "ce_clean", "ce_adv", "triplet"):
        np.testing.assert_allclose(h2[key][0], h1[key][0], rtol=1e-4, err_msg=key)
    assert h1["triplet"][0] > 0  # The comparison covers a non-trivial triplet term.
    for a, b in zip(single.classifier.get_weights(), mirrored.classifier.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attack", attacks.TRAINING_ATTACKS)
def test_every_training_attack_runs_inside_the_compiled_step(attack):
    x, y = _batch(32)
    keras.utils.set_random_seed(0)
    params = {"eps": 0.3, "steps": 2, "step_size": None}
    classifier = models.get_model("mnist_small")
    if attacks.get_entry(attack).inputs == "thermometer":  # LS-PGA: behind an encoding.
        layer = defenses.ThermometerEncoding(4, name="preprocessing")
        net = models.get_model("mnist_small", input_shape=(28, 28, 4))
        classifier = defenses.defended_model(layer, net, (28, 28, 1))
    model = AT2LModel(
        classifier,
        objective="at2l",
        attack=attack,
        attack_params={k: v for k, v in params.items() if k in attacks.get_entry(attack).params},
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    # The compiled step's attack raises the loss: on these batches the
    # adversarial cross-entropy exceeds the clean one (an attack that returned
    # x, or ran no step, would leave them equal).
    result = model.evaluate(ds, verbose=0, return_dict=True)
    assert result["ce_adv"] > result["ce_clean"] + 0.01, result
    # The adversarial batch stays in the eps ball and the box.
    x_adv = model.generate_adversarial(tf.constant(x[:16]), tf.constant(y[:16]))
    assert float(tf.reduce_max(tf.abs(x_adv - x[:16]))) <= 0.3 + 1e-6
    assert 0.0 <= float(tf.reduce_min(x_adv)) and float(tf.reduce_max(x_adv)) <= 1.0


def test_ls_pga_needs_a_thermometer_encoded_classifier():
    with pytest.raises(ValueError, match="needs a classifier behind a thermometer encoding"):
        AT2LModel(models.get_model("mnist_small"), attack="ls_pga", attack_params={"eps": 0.3})


def test_ls_pga_in_the_step_attacks_the_network_behind_the_encoding():
    x, y = _batch(16)
    keras.utils.set_random_seed(0)
    layer = defenses.ThermometerEncoding(8, name="preprocessing")
    net = models.get_model("mnist_small", input_shape=(28, 28, 8))
    model = AT2LModel(
        defenses.defended_model(layer, net, (28, 28, 1)),
        objective="at", attack="ls_pga", attack_params={"eps": 0.3, "steps": 3},
    )
    x_adv = model.generate_adversarial(tf.constant(x), tf.constant(y)).numpy()
    expected = attacks.ls_pga(
        lambda z: net(z, training=False), x, y, eps=0.3, steps=3, levels=8
    ).numpy()
    np.testing.assert_array_equal(x_adv, expected)
    assert np.abs(x_adv - x).max() > 0.01  # It moved the images.


def test_bad_attack_parameters_are_rejected_with_the_accepted_names():
    with pytest.raises(ValueError, match="takes no parameter 'stepsize'; it takes: eps, steps"):
        AT2LModel(models.get_model("mnist_small"), attack="pgd", attack_params={"stepsize": 0.1})


def test_tr_objective_is_clean_ce_plus_triplet_without_adversarial_ce():
    # Triplet regularisation alone (the paper's Fig. 3): 1/k Σ CE(x_i) + λ2/k Σ h_i.
    x, _ = _batch(n=2)
    y = np.array([0, 1])
    model = _model("tr", lambda2=0.8, lambda1=0.7, num_classes=2)
    total, out = model._compute_losses((tf.constant(x), tf.constant(y)), training=False)
    clf = model.classifier
    logits = clf(x)
    x_adv = attacks.fgsm(lambda z: clf(z, training=False), tf.constant(x), tf.constant(y), eps=0.3)
    adv_logits = clf(x_adv)
    hinge = losses.triplet_hinge(adv_logits, logits, tf.gather(logits, [1, 0]), margin=0.5).numpy()
    assert hinge.mean() > 0  # The triplet term is in the sum being checked.
    expected = _ce(y, logits).mean() + 0.8 * hinge.mean()
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    # ... and it is not Eq. 1's mix of clean and adversarial CE.
    eq1 = (_ce(y, logits).sum() + 0.7 * _ce(y, adv_logits).sum()) / (1.7 * 2)
    assert abs(eq1 + 0.8 * hinge.mean() - expected) > 1e-3


def _one_example_per_class():
    x, y = data.load_mnist_arrays("validation")
    idx = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
    return x[idx].astype("float32") / 255.0, y[idx].astype("int64")


def _pushed_to(logits, y):
    masked = np.array(logits, dtype=np.float64)
    masked[np.arange(len(y)), y] = -np.inf
    return masked.argmax(axis=1)


def _linf(a, b):
    return np.max(np.abs(a - b), axis=-1)


@pytest.mark.parametrize("objective", ["at2l", "tr"])
def test_ten_class_negatives_are_the_class_the_adversarial_is_pushed_to(objective):
    # One example per class: each pushed-to class has exactly one candidate,
    # so the negative of example i is the example of class argmax_{c≠y_i}
    # f(x_adv_i)_c, its logits taken from the clean pass.
    x, y = _one_example_per_class()
    model = _model(objective, lambda2=1.0, seed=4)
    _, out = model._compute_losses((tf.constant(x), tf.constant(y)), training=False)
    clean, adv = out["logits"].numpy(), out["adv_logits"].numpy()
    by_adv, by_clean = _pushed_to(adv, y), _pushed_to(clean, y)
    assert (by_adv != by_clean).any()  # The batch tells the two rules apart.

    def hinge(targets):  # The label of example j is j.
        return np.maximum(_linf(adv, clean) - _linf(adv, clean[targets]) + 0.5, 0.0)

    np.testing.assert_allclose(out["hinge"].numpy(), hinge(by_adv), rtol=1e-5, atol=1e-6)
    assert np.abs(hinge(by_adv) - hinge(by_clean)).max() > 1e-4


def test_triplet_regularizer_layer_uses_the_adversarial_logits_to_pick_negatives():
    # Clean logits point every example to class (y + 1) mod 4, the adversarial
    # ones to (y + 2) mod 4: only the latter is the paper's rule.
    y = tf.constant([0, 1, 2, 3])
    clean = tf.one_hot((y + 1) % 4, 4) * 2.0 + tf.one_hot(y, 4) * 3.0
    adv = tf.one_hot((y + 2) % 4, 4) * 4.0 + tf.one_hot(y, 4) * 1.0
    layer = TripletRegularizer(lambda2=0.5, margin=1.0, num_classes=4, seed=0)
    h = layer(y, clean, adv, tf.constant(4.0)).numpy()
    a, c = adv.numpy(), clean.numpy()
    expected = np.maximum(_linf(a, c) - _linf(a, c[(np.arange(4) + 2) % 4]) + 1.0, 0.0)
    wrong = np.maximum(_linf(a, c) - _linf(a, c[(np.arange(4) + 1) % 4]) + 1.0, 0.0)
    assert np.abs(expected - wrong).max() > 0.5
    np.testing.assert_allclose(h, expected, atol=1e-6)
    np.testing.assert_allclose(float(layer.losses[0]), 0.5 * expected.sum() / 4, rtol=1e-6)


def _dropout_and_batch_norm_classifier():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 5, strides=2),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10),
        ]
    )


@pytest.mark.parametrize("attack, params", [("fgsm", {"eps": 0.3}), ("ifgsm", {"eps": 0.3, "steps": 3})])
def test_attacks_in_the_step_see_the_classifier_in_inference_mode(attack, params):
    # Dropout must not randomise, and batch norm must neither normalise by the
    # batch nor update its moving statistics, while x_adv is crafted.
    x, y = _batch(16)
    clf = _dropout_and_batch_norm_classifier()
    model = AT2LModel(clf, objective="at", attack=attack, attack_params=params)
    bn = clf.layers[1]
    moving = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    x, y = tf.constant(x), tf.constant(y)
    first = model.generate_adversarial(x, y).numpy()
    np.testing.assert_array_equal(model.generate_adversarial(x, y).numpy(), first)
    for before, var in zip(moving, (bn.moving_mean, bn.moving_variance)):
        np.testing.assert_array_equal(var.numpy(), before)
    inference = attacks.make_attack(attack, **params)(lambda z: clf(z, training=False), x, y)
    np.testing.assert_array_equal(first, inference.numpy())


class _CallCounter(keras.layers.Layer):
    """Identity layer counting its executions (a variable, so it counts inside graphs)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(tf.ones((), "int64"))
        return x


@pytest.mark.parametrize("objective, per_step", [("none", 1), ("at", 3 + 2), ("at2l", 3 + 2), ("tr", 3 + 2)])
def test_forward_passes_per_step_no_extra_one_for_the_negatives(objective, per_step):
    # PGD-3 costs 3 forward passes, then one clean and one adversarial pass;
    # AT²L takes its negatives' logits from the clean pass, so it costs what
    # AT costs. The Python body of the step runs only when traced: not
    # re-traced or run eagerly per step.
    x, y = _batch(64)
    keras.utils.set_random_seed(0)
    counter = _CallCounter()
    clf = models.get_model("mnist_small")
    wrapped = keras.Sequential([keras.Input((28, 28, 1)), counter, clf])
    model = AT2LModel(wrapped, objective=objective, attack="pgd", attack_params={"eps": 0.3, "steps": 3})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    traces = []
    body = model._compute_losses

    def traced_body(data, training):
        traces.append(training)
        return body(data, training)

    model._compute_losses = traced_body
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)
    model.fit(ds, epochs=1, verbose=0)
    assert int(counter.calls.numpy()) == 4 * per_step
    # Traced at most twice (tf.function traces again after the first call
    # creates the optimizer's variables), never once per step.
    assert 1 <= len(traces) <= 2 and all(traces)


# --- Training ingredients: AWP, weight averaging, the step's ε (issue 31) ---


def _ingredient_model(objective="at", weights=None, lr=0.1, **kwargs):
    """FGSM (deterministic; TRADES: its KL attack, 2 steps) on mnist_small, plain SGD."""
    keras.utils.set_random_seed(0)
    clf = models.get_model("mnist_small")
    if weights is not None:
        clf.set_weights(weights)
    attack, params = ("pgd", {"eps": 0.3, "steps": 2}) if objective == "trades" else ("fgsm", {"eps": 0.3})
    model = AT2LModel(clf, objective=objective, attack=attack, attack_params=params, seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(lr))
    return model


def _one_batch_ds(n=32):
    x, y = _batch(n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(n)


@pytest.mark.parametrize("objective, lambda2", [("at", None), ("at2l", None), ("trades", None), ("mart", 0.5)])
def test_awp_perturbation_is_restored_exactly_after_each_step(objective, lambda2):
    # With a zero learning rate only AWP could move the weights: w + v − v must be w, bit for bit.
    model = _ingredient_model(objective, lr=0.0, lambda2=lambda2, awp_gamma=0.05)
    before = model.classifier.get_weights()
    model.fit(_one_batch_ds(), epochs=3, verbose=0)
    assert int(model.optimizer.iterations) == 3
    for a, b in zip(before, model.classifier.get_weights()):
        np.testing.assert_array_equal(a, b)


def _kernels_grad(clf, x, y, x_adv):
    """∇ of `at`'s loss (λ1 = 1) w.r.t. every trainable weight, x' fixed."""
    with tf.GradientTape() as tape:
        loss = (tf.reduce_mean(_tf_ce(y, clf(x, training=True)))
                + tf.reduce_mean(_tf_ce(y, clf(x_adv, training=True)))) / 2
    return tape.gradient(loss, clf.trainable_weights)


def _tf_ce(y, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32))


def test_awp_step_is_the_gradient_at_the_perturbed_weights_applied_to_the_restored_ones():
    x, y = _batch(32)
    x, y = tf.constant(x), tf.constant(y.astype("int32"))
    gamma, lr = 0.05, 0.1
    plain = _ingredient_model("at", lr=lr)
    w0 = plain.classifier.get_weights()
    awp = _ingredient_model("at", weights=w0, lr=lr, awp_gamma=gamma)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    plain.fit(ds, epochs=1, verbose=0)
    awp.fit(ds, epochs=1, verbose=0)

    # By hand: x' at w; g at w; v_l = γ ||w_l|| g_l / ||g_l|| on kernels; g' at w + v; w − lr·g'.
    clf = models.get_model("mnist_small")
    clf.set_weights(w0)
    x_adv = attacks.fgsm(lambda z: clf(z, training=False), x, y, eps=0.3)
    g = _kernels_grad(clf, x, y, x_adv)
    perturbed = [w + (gamma * np.linalg.norm(w) * gi.numpy() / np.linalg.norm(gi.numpy()) if w.ndim >= 2 else 0)
                 for w, gi in zip(w0, g)]
    clf.set_weights(perturbed)
    g_awp = _kernels_grad(clf, x, y, x_adv)
    expected = [w - lr * gi.numpy() for w, gi in zip(w0, g_awp)]
    moved = 0
    for e, got, p in zip(expected, awp.classifier.get_weights(), plain.classifier.get_weights()):
        np.testing.assert_allclose(got, e, rtol=1e-4, atol=1e-6)
        moved = max(moved, np.abs(got - p).max())
    assert moved > 1e-4  # AWP changed the update: it is not a no-op.


@pytest.mark.parametrize("objective, rtol", [("at", 1e-6), ("at2l", 1e-2)])
def test_awp_before_its_start_step_leaves_the_step_unchanged(objective, rtol):
    # v = 0 until optimizer step `awp_start_step`: the same update as without AWP.
    # With the triplet term the extra pass draws its random negatives once more, so
    # the update's negatives differ: equal within 1% (a second triplet term added
    # by the extra pass would be ~10% of the loss here).
    plain = _ingredient_model(objective)
    w0 = plain.classifier.get_weights()
    late = _ingredient_model(objective, weights=w0, awp_gamma=0.05, awp_start_step=100)
    h1 = plain.fit(_one_batch_ds(), epochs=2, verbose=0).history
    h2 = late.fit(_one_batch_ds(), epochs=2, verbose=0).history
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=rtol)
    if objective == "at":
        for a, b in zip(plain.classifier.get_weights(), late.classifier.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_weight_average_is_the_ema_of_the_step_weights():
    d = 0.7
    model = _ingredient_model("at", ema=d)
    ds = _one_batch_ds()
    model.fit(ds, epochs=1, verbose=0)
    w1 = model.classifier.trainable_weights and [v.numpy() for v in model.classifier.trainable_weights]
    for a, w in zip(model.weight_average.get_values(), w1):
        np.testing.assert_array_equal(a, w)  # θ̄_1 = θ_1.
    model.fit(ds, epochs=1, verbose=0)
    w2 = [v.numpy() for v in model.classifier.trainable_weights]
    for a, u, w in zip(model.weight_average.get_values(), w1, w2):
        np.testing.assert_allclose(a, d * u + (1 - d) * w, rtol=1e-6, atol=1e-7)
    assert any(np.abs(a - w).max() > 1e-5 for a, w in zip(model.weight_average.get_values(), w2))
    # Keras' end-of-fit finalize must not have copied the average into the weights.
    raw = [v.numpy() for v in model.classifier.trainable_weights]
    model.weight_average.swap()
    model.weight_average.swap()
    for a, b in zip(raw, [v.numpy() for v in model.classifier.trainable_weights]):
        np.testing.assert_array_equal(a, b)


def test_set_training_eps_changes_the_step_attack_and_not_the_validation_one():
    model = _ingredient_model("at")
    ds = _one_batch_ds()
    model.set_training_eps(0.0)  # x' = x in the step: CE(x') = CE(x).
    h = model.fit(ds, epochs=1, verbose=0, validation_data=ds).history
    np.testing.assert_allclose(h["ce_adv"][0], h["ce_clean"][0], rtol=1e-5)
    assert h["val_ce_adv"][0] > h["val_ce_clean"][0] + 1e-3  # Validation attacks at the full ε.
    assert model.training_eps == 0.0
    with pytest.raises(ValueError, match="eps=0.5"):
        model.set_training_eps(0.5)


def test_step_size_scales_with_the_training_eps():
    keras.utils.set_random_seed(0)
    model = AT2LModel(models.get_model("mnist_small"), objective="at", attack="pgd",
                      attack_params={"eps": 0.3, "steps": 4, "step_size": 0.1})
    model.set_training_eps(0.15)
    assert model._train_attack_fn.bound_params == {"eps": 0.15, "steps": 4, "step_size": 0.05}
    assert model._attack_fn.bound_params == {"eps": 0.3, "steps": 4, "step_size": 0.1}


def test_ingredient_arguments_are_rejected_with_their_values():
    clf = models.get_model("mnist_small")
    with pytest.raises(ValueError, match="ema=1.0"):
        AT2LModel(clf, ema=1.0)
    with pytest.raises(ValueError, match="awp_gamma=-0.1"):
        AT2LModel(clf, awp_gamma=-0.1)


def test_awp_and_weight_average_under_two_replica_mirrored_strategy_match_one_device():
    x, y = _batch(2)
    x = np.concatenate([x, x])
    y = np.array([3, 7, 3, 7])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    single = _ingredient_model("at2l", lambda2=1.0, awp_gamma=0.05, ema=0.5)
    w0 = single.classifier.get_weights()
    single.fit(ds, epochs=2, verbose=0)
    strategy = _two_replicas()
    with strategy.scope():
        mirrored = _ingredient_model("at2l", weights=w0, lambda2=1.0, awp_gamma=0.05, ema=0.5)
    mirrored.fit(ds, epochs=2, verbose=0)
    for a, b in zip(single.classifier.get_weights(), mirrored.classifier.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(single.weight_average.get_values(), mirrored.weight_average.get_values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(np.abs(a - b).max() > 1e-5 for a, b in zip(w0, single.classifier.get_weights()))


def test_awp_and_weight_average_run_under_mixed_bfloat16():
    from at2l_tf import precision

    keras.utils.set_random_seed(0)
    with precision.policy_scope("mixed_bfloat16"):
        clf = models.get_model("mnist_small")
    model = AT2LModel(clf, objective="trades", attack="pgd", attack_params={"eps": 0.3, "steps": 2},
                      awp_gamma=0.01, ema=0.9)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    before = clf.get_weights()
    h = model.fit(_one_batch_ds(), epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in h.values())
    assert all(a.dtype == np.float32 for a in model.weight_average.get_values())
    for a, b in zip(before, clf.get_weights()):
        np.testing.assert_array_equal(a, b)  # Restored exactly under bf16 compute too.
