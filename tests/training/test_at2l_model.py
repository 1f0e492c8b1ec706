import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks, data, losses, models
from at2l_tf.training import AT2LModel


def _batch(n=8, offset=0):
    x, y = data.load_mnist_arrays("validation")
    return (x[offset : offset + n].astype("float32") / 255.0, y[offset : offset + n])


def _model(defense, lambda2=0.5, lambda1=1.0, seed=0, weights=None, num_classes=10):
    keras.utils.set_random_seed(seed)
    clf = models.get_model("mnist_small", num_classes=num_classes)
    if weights is not None:
        clf.set_weights(weights)
    model = AT2LModel(
        clf,
        defense=defense,
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
    "defense, names",
    [
        ("none", {"loss", "ce_clean", "acc"}),
        ("at", {"loss", "ce_clean", "ce_adv", "acc", "adv_acc"}),
        ("at2l", {"loss", "ce_clean", "ce_adv", "triplet", "acc", "adv_acc"}),
        ("tr", {"loss", "ce_clean", "ce_adv", "triplet", "acc", "adv_acc"}),
    ],
)
def test_fit_and_evaluate_report_the_metrics_of_each_defense(defense, names):
    x, y = _batch(64)
    model = _model(defense)
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
    with pytest.raises(ValueError, match="defense='adv'"):
        AT2LModel(clf, defense="adv")
    with pytest.raises(ValueError, match="attack='cw'"):
        AT2LModel(clf, attack="cw")
    with pytest.raises(ValueError, match="lambda1=-1"):
        AT2LModel(clf, lambda1=-1)
    with pytest.raises(ValueError, match="lambda2=-0.5"):
        AT2LModel(clf, lambda2=-0.5)


def test_get_config_round_trips():
    model = _model("at2l", lambda2=0.25)
    clone = AT2LModel.from_config(model.get_config())
    assert (clone.defense, clone.attack, clone.lambda2, clone.margin) == ("at2l", "fgsm", 0.25, 0.5)
    assert clone.attack_params == {"eps": 0.3}
    x, _ = _batch(2)
    assert clone(x).shape == (2, 10)


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

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
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
    model = AT2LModel(
        models.get_model("mnist_small"),
        defense="at2l",
        attack=attack,
        attack_params={"eps": 0.3, "steps": 2, "step_size": None},
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["ce_adv"][0] > 0
    # The adversarial batch stays in the eps ball and the box.
    x_adv = model.generate_adversarial(tf.constant(x[:16]), tf.constant(y[:16]))
    assert float(tf.reduce_max(tf.abs(x_adv - x[:16]))) <= 0.3 + 1e-6
    assert 0.0 <= float(tf.reduce_min(x_adv)) and float(tf.reduce_max(x_adv)) <= 1.0
