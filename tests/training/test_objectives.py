"""The objectives (TRADES, MART, ...) and the triplet term on top of them, on tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import defenses, models
from at2l_tf.training import AT2LModel, embedding, objectives

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, (8, 6)).astype("float32")
# Any "adversarial" batch (the losses are what is checked), far enough for O(0.1-1) KLs.
X_ADV = (X + RNG.uniform(-2, 2, X.shape)).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def _tiny(seed=0):
    """A 6 -> 5 (ReLU, the embedding) -> 3 MLP; p_y(x) between 0.05 and 0.6 on X."""
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu", kernel_initializer=init, name="hidden")(inputs)
    logits = keras.layers.Dense(3, kernel_initializer=init, name="logits")(hidden)
    return keras.Model(inputs, logits, name="tiny")


def _model(objective, **kwargs):
    kwargs.setdefault("attack_params", {"eps": 0.1, "steps": 2})
    return AT2LModel(_tiny(), objective=objective, **kwargs)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _by_hand(model):
    p = _softmax(model.classifier(X).numpy().astype(np.float64))
    q = _softmax(model.classifier(X_ADV).numpy().astype(np.float64))
    i = np.arange(len(Y))
    ce = -np.log(p[i, Y])
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    kl_reversed = (q * (np.log(q) - np.log(p))).sum(-1)
    q_other = np.where(np.eye(3)[Y] > 0, -np.inf, q).max(-1)
    bce = -np.log(q[i, Y]) - np.log(1 - q_other)
    return dict(p=p, q=q, ce=ce, kl=kl, kl_reversed=kl_reversed, bce=bce, p_true=p[i, Y])


def _total(model):
    total, out = model._compute_losses((tf.constant(X), tf.constant(Y), tf.constant(X_ADV)), training=False)
    return float(total), out


def test_trades_loss_is_ce_plus_beta_kl_of_clean_to_adversarial_by_hand():
    model = _model("trades", beta=2.5)
    h = _by_hand(model)
    expected = np.mean(h["ce"] + 2.5 * h["kl"])
    # The authors' code: sum of the KL over the batch divided by the batch size — the same number.
    assert np.isclose(expected, h["ce"].mean() + 2.5 * h["kl"].sum() / len(Y))
    total, _ = _total(model)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    # Tells the KL's direction apart (KL(p(x') ‖ p(x)) would give another total).
    assert abs(np.mean(h["ce"] + 2.5 * h["kl_reversed"]) - expected) > 1e-2


def test_mart_loss_is_bce_plus_weighted_kl_by_hand():
    model = _model("mart", beta=3.0)
    h = _by_hand(model)
    expected = np.mean(h["bce"] + 3.0 * h["kl"] * (1 - h["p_true"]))
    total, _ = _total(model)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    # The (1 - p_y(x)) weight, the boosted term and the KL's direction all move the total.
    assert abs(np.mean(h["bce"] + 3.0 * h["kl"]) - expected) > 1e-2
    assert abs(np.mean(-np.log(h["q"][np.arange(8), Y]) + 3.0 * h["kl"] * (1 - h["p_true"])) - expected) > 1e-2
    assert abs(np.mean(h["bce"] + 3.0 * h["kl_reversed"] * (1 - h["p_true"])) - expected) > 1e-2


def test_default_betas_and_lambda2_follow_the_recipe():
    assert _model("trades").beta == 1.0 and _model("mart").beta == 6.0
    assert _model("at").beta is None
    assert [_model(d).lambda2 for d in ("at", "at2l", "tr", "trades", "mart")] == [0.0, 0.5, 0.5, 0.0, 0.0]
    assert [_model(d).uses_triplet for d in ("none", "at", "at2l", "tr", "trades", "mart")] == [
        False, False, True, True, False, False
    ]
    assert _model("at", lambda2=0.3).uses_triplet and _model("mart", lambda2=0.3).lambda2 == 0.3


@pytest.mark.parametrize("objective", ["at", "trades", "mart"])
def test_lambda2_adds_the_same_triplet_term_to_any_objective(objective):
    plain = _model(objective, beta=None if objective == "at" else 2.0)
    with_triplet = _model(objective, beta=None if objective == "at" else 2.0, lambda2=0.7, margin=3.0)
    base, _ = _total(plain)
    total, out = _total(with_triplet)
    logits, adv = plain.classifier(X).numpy(), plain.classifier(X_ADV).numpy()
    hinge = out["hinge"].numpy()
    assert hinge.mean() > 0.1
    # Each example's hinge against its negative, one of the other labels' clean logits.
    d_pos = np.abs(adv - logits).max(-1)
    for i, h in enumerate(hinge):
        candidates = [max(d_pos[i] - np.abs(adv[i] - logits[j]).max() + 3.0, 0) for j in range(8) if Y[j] != Y[i]]
        assert min(abs(h - c) for c in candidates) < 1e-4
    np.testing.assert_allclose(total, base + 0.7 * hinge.mean(), rtol=1e-5)


def test_trades_picks_its_kl_attack_and_the_others_the_configured_one():
    trades = _model("trades", attack="pgd", attack_params={"eps": 0.2, "steps": 4, "step_size": 0.05})
    assert trades.attack == "trades_kl" and trades._attack_fn.__name__ == "trades_kl_attack"
    assert trades._attack_fn.bound_params == {"eps": 0.2, "steps": 4, "step_size": 0.05}
    assert _model("mart", attack="ifgsm").attack == "ifgsm"
    assert objectives.TRADES().attack_loss == "kl" and objectives.MART().attack_loss == "ce"
    with pytest.raises(ValueError, match="own KL attack .trades_kl.*received attack='fgsm'"):
        _model("trades", attack="fgsm", attack_params={"eps": 0.1})
    # In the step, x' is the KL attack's: label-free, within eps of x.
    keras.utils.set_random_seed(1)
    x_adv = trades.generate_adversarial(tf.constant(X), tf.constant(Y)).numpy()
    assert 0.05 < np.abs(x_adv - X).max() <= 0.2 + 1e-6


@pytest.mark.parametrize("objective, beta, triplet", [
    ("trades", 1.5, False), ("mart", 4.0, False), ("trades", 2.0, True), ("mart", None, True),
])
def test_fit_reports_the_metrics_of_each_objective(objective, beta, triplet):
    model = _model(objective, beta=beta, lambda2=0.5 if triplet else None)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)
    history = model.fit(ds, epochs=1, verbose=0).history
    names = {"loss", "ce_clean", "ce_adv", "acc", "adv_acc"} | ({"triplet"} if triplet else set())
    assert set(history) == names and all(np.isfinite(v[0]) for v in history.values())


def _known_penultimate():
    """`x -> E = x @ W` (the embedding, known) -> logits `E @ V`."""
    inputs = keras.Input((3,))
    emb = keras.layers.Dense(4, use_bias=False, name="emb")
    out = keras.layers.Dense(2, use_bias=False, name="logits")
    model = keras.Model(inputs, out(emb(inputs)))
    W = np.arange(12, dtype="float32").reshape(3, 4) / 10
    V = np.array([[1, -1], [0, 2], [3, 0], [-1, 1]], "float32")
    emb.set_weights([W]), out.set_weights([V])
    return model, W, V


def test_embedding_features_are_the_penultimate_layers_output():
    model, W, V = _known_penultimate()
    x = np.array([[1, 0, 0], [0.5, 2, -1]], "float32")
    logits, features = embedding.with_embedding(model)(x)
    np.testing.assert_allclose(features.numpy(), x @ W, rtol=1e-6)
    np.testing.assert_allclose(logits.numpy(), x @ W @ V, rtol=1e-6)
    np.testing.assert_allclose(logits.numpy(), model(x).numpy(), rtol=1e-6)
    # ... also behind a defence layer (the network's penultimate layer, on the encoded input).
    layer = defenses.ThermometerEncoding(4, name="preprocessing")
    net = models.get_model("mnist_small", input_shape=(28, 28, 4))
    clf = defenses.defended_model(layer, net, (28, 28, 1))
    images = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    logits, features = embedding.with_embedding(clf)(images)
    hidden = keras.Model(net.inputs, net.get_layer(index=-2).output)(layer(images))
    np.testing.assert_allclose(features.numpy(), hidden.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), clf(images).numpy(), rtol=1e-5, atol=1e-6)


def test_the_model_puts_the_triplet_on_the_embedding_when_asked():
    clf, W, V = _known_penultimate()
    x = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], "float32")
    x_adv = x + 0.5
    y = np.array([0, 1, 0, 1])
    model = AT2LModel(clf, objective="at2l", attack="fgsm", attack_params={"eps": 0.1},
                      triplet_features="embedding", triplet_negative="hardest", triplet_distance="l2", margin=10.0)
    _, out = model._compute_losses((tf.constant(x), tf.constant(y), tf.constant(x_adv)), training=False)
    e, e_adv = x @ W, x_adv @ W
    dist = np.sqrt(((e_adv[:, None] - e[None]) ** 2).sum(-1))
    other = y[None, :] != y[:, None]
    neg = np.where(other, dist, np.inf).argmin(1)
    expected = np.maximum(dist[np.arange(4), np.arange(4)] - dist[np.arange(4), neg] + 10.0, 0)
    np.testing.assert_allclose(out["hinge"].numpy(), expected, rtol=1e-4)
    # Not the logits' hinge.
    l, l_adv = x @ W @ V, x_adv @ W @ V
    on_logits = np.sqrt(((l_adv - l) ** 2).sum(-1))
    assert np.abs(on_logits - dist[np.arange(4), np.arange(4)]).max() > 0.1


def test_a_model_without_a_penultimate_layer_is_refused():
    inputs = keras.Input((6,))
    linear = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="linear")
    with pytest.raises(ValueError, match="model 'linear' has no penultimate layer"):
        embedding.with_embedding(linear)
    with pytest.raises(ValueError, match="no penultimate layer"):
        AT2LModel(linear, objective="at2l", attack_params={"eps": 0.1}, triplet_features="embedding")
    # Fine without the embedding, or without the triplet term.
    AT2LModel(linear, objective="at2l", attack_params={"eps": 0.1})
    AT2LModel(linear, objective="at", attack_params={"eps": 0.1}, triplet_features="embedding")


class _CallCounter(keras.layers.Layer):
    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(tf.ones((), "int64"))
        return x


@pytest.mark.parametrize("objective, features, per_step", [
    ("at2l", "embedding", 3 + 2),  # No extra pass for the embedding.
    ("trades", "logits", 1 + 3 + 2),  # The KL attack's clean reference logits, once per batch.
])
def test_forward_passes_per_step(objective, features, per_step):
    keras.utils.set_random_seed(0)
    counter = _CallCounter()
    inputs = keras.Input((6,))
    clf = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu")(counter(inputs))))
    model = AT2LModel(clf, objective=objective, attack="pgd", attack_params={"eps": 0.1, "steps": 3},
                      lambda2=0.5, triplet_features=features)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(tf.data.Dataset.from_tensor_slices((X, Y)).batch(4), epochs=1, verbose=0)
    assert int(counter.calls.numpy()) == 2 * per_step


@pytest.mark.parametrize("kwargs", [
    dict(objective="trades", beta=2.0, lambda2=0.25, triplet_features="embedding", triplet_negative="hardest",
         triplet_distance="cosine", margin=0.05),
    dict(objective="mart", beta=None, attack="ifgsm"),
    dict(objective="at", lambda2=0.4, triplet_negative="hardest", triplet_distance="l1"),
    dict(objective="none"),
    dict(objective="tr", triplet_features="embedding"),
])
def test_get_config_round_trips_with_each_objective(kwargs):
    kwargs = {"attack_params": {"eps": 0.2, "steps": 3}, "seed": 7, **kwargs}
    model = AT2LModel(_tiny(), **kwargs)
    clone = AT2LModel.from_config(model.get_config())
    fields = ("objective_name", "attack", "attack_params", "lambda1", "lambda2", "margin", "beta", "seed",
              "uses_triplet", "crafts_adversarial")
    assert {f: getattr(clone, f) for f in fields} == {f: getattr(model, f) for f in fields}
    t, c = model.triplet, clone.triplet
    assert (c.distance, c.features, c.negative, c.lambda2) == (t.distance, t.features, t.negative, t.lambda2)
    assert clone.objective.get_config() == model.objective.get_config()
    for key, value in kwargs.items():
        if key in ("triplet_features", "triplet_negative", "triplet_distance"):
            assert getattr(clone.triplet, key.split("_")[-1]) == value
        elif key == "objective":
            assert clone.objective_name == value
        elif key == "attack_params":
            assert clone.attack_params == value
        elif value is not None and key != "attack":
            assert getattr(clone, key) == value, key
    np.testing.assert_allclose(clone(X).numpy(), model(X).numpy())


def test_describe_names_the_objective_and_the_triplet():
    d = objectives.describe("mart", lambda1=1.0, lambda2=0.3, beta=None, margin=0.2, distance="cosine",
                            features="embedding", negative="hardest")
    assert d == {
        "objective": "mart",
        "loss": {"name": "mart", "attack_loss": "ce", "beta": 6.0},
        "triplet": {"features": "embedding", "distance": "cosine", "negative": "hardest",
                    "lambda2": 0.3, "margin": 0.2},
    }
    assert objectives.describe("at", lambda1=0.5, lambda2=None, beta=None, margin=0.5, distance="linf",
                               features="logits", negative="random")["triplet"] is None
    assert objectives.describe("at2l", lambda1=0.5, lambda2=None, beta=None, margin=0.5, distance="linf",
                               features="logits", negative="random")["triplet"]["lambda2"] == 0.5


def test_bad_objective_arguments_are_rejected():
    with pytest.raises(ValueError, match="objective='free'"):
        _model("free")
    with pytest.raises(ValueError, match="beta must be >= 0, received beta=-1"):
        _model("trades", beta=-1)
    with pytest.raises(ValueError, match="features='pen'"):
        _model("at2l", triplet_features="pen")
    with pytest.raises(ValueError, match="negative='semi'"):
        _model("at2l", triplet_negative="semi")
    with pytest.raises(ValueError, match="distance='l3'"):
        _model("at2l", triplet_distance="l3")


def test_a_config_of_before_the_rename_still_builds_the_model():
    model = AT2LModel(_tiny(), objective="at", lambda2=0.4, triplet_distance="l1", attack_params={"eps": 0.2})
    config = model.get_config()
    old = {{"objective": "defense", "triplet_distance": "norm"}.get(k, k): v for k, v in config.items()}
    clone = AT2LModel.from_config(old)
    assert (clone.objective_name, clone.triplet.distance, clone.lambda2) == ("at", "l1", 0.4)
