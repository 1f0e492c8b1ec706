import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import losses


def test_triplet_hinge_matches_hand_computation():
    anchor = tf.constant([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    positive = tf.constant([[1.5, 2.0, -1.0], [0.2, 0.1, 0.0]])
    negative = tf.constant([[1.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
    # Row 0: d_pos = max(.5, 0, 1) = 1, d_neg = max(0, 1, 0) = 1 -> max(1 - 1 + .5, 0) = .5
    # Row 1: d_pos = .2, d_neg = 3 -> max(.2 - 3 + .5, 0) = 0
    h = losses.triplet_hinge(anchor, positive, negative, margin=0.5)
    np.testing.assert_allclose(h.numpy(), [0.5, 0.0], atol=1e-6)
    # L2: row 0: d_pos = sqrt(.25 + 1) , d_neg = 1
    h2 = losses.triplet_hinge(anchor, positive, negative, margin=0.5, distance="l2")
    np.testing.assert_allclose(h2.numpy()[0], np.sqrt(1.25) - 1 + 0.5, atol=1e-5)
    h1 = losses.triplet_hinge(anchor, positive, negative, margin=0.0, distance="l1")
    np.testing.assert_allclose(h1.numpy(), [0.5, 0.0], atol=1e-6)


def test_bad_distance_and_margin_are_rejected():
    a = tf.zeros((2, 3))
    with pytest.raises(ValueError, match="distance=.l3."):
        losses.logit_distance(a, a, distance="l3")
    with pytest.raises(ValueError, match="margin=-1"):
        losses.triplet_hinge(a, a, a, margin=-1)


def test_binary_negatives_have_the_other_label():
    labels = tf.constant([0, 1, 1, 0, 1, 0, 0, 1])
    adv = tf.random.normal((8, 2), seed=1)
    for seed in range(5):
        idx, valid = losses.select_negatives(labels, adv, num_classes=2, seed=seed)
        assert valid.numpy().all()
        assert (labels.numpy()[idx.numpy()] != labels.numpy()).all()


def test_multiclass_negative_is_the_class_the_adversarial_is_pushed_to():
    labels = tf.constant([0, 1, 2, 3, 3, 0])
    # Highest wrong-class logits: ex0 -> 2, ex1 -> 3, ex2 -> 4 (absent from the
    # batch: fall back to any other label), ex3 -> 0, ex4 -> 1, ex5 -> 3.
    adv = tf.one_hot([2, 3, 4, 0, 1, 3], 5) * 5.0 + tf.one_hot(labels, 5) * 10.0
    rng = np.random.default_rng(0)
    for seed in range(10):
        idx, valid = losses.select_negatives(labels, adv, num_classes=5, seed=int(rng.integers(1 << 30)))
        y, neg = labels.numpy(), labels.numpy()[idx.numpy()]
        assert valid.numpy().all()
        assert neg[0] == 2 and neg[1] == 3 and neg[3] == 0 and neg[4] == 1 and neg[5] == 3
        assert neg[2] != y[2]


def test_random_choice_covers_all_candidates_and_is_seeded():
    labels = tf.constant([0, 1, 1, 1, 1])
    adv = tf.zeros((5, 2))
    picks = {
        int(losses.select_negatives(labels, adv, num_classes=2, seed=s)[0][0]) for s in range(40)
    }
    assert picks == {1, 2, 3, 4}
    a = losses.select_negatives(labels, adv, num_classes=2, seed=7)[0].numpy()
    b = losses.select_negatives(labels, adv, num_classes=2, seed=7)[0].numpy()
    np.testing.assert_array_equal(a, b)


def test_batch_of_one_label_has_no_negative_and_zero_hinge():
    labels = tf.constant([3, 3, 3])
    clean = tf.random.normal((3, 10), seed=2)
    adv = clean + 1.0
    _, valid = losses.select_negatives(labels, adv, num_classes=10, seed=0)
    assert not valid.numpy().any()
    h = losses.triplet_term(labels, clean, adv, margin=0.5, num_classes=10, seed=0)
    np.testing.assert_array_equal(h.numpy(), np.zeros(3))


def test_triplet_term_uses_clean_logits_of_the_negative():
    labels = tf.constant([0, 1])
    clean = tf.constant([[2.0, 0.0], [0.0, 2.0]])
    adv = tf.constant([[1.0, 1.0], [0.5, 1.5]])
    h = losses.triplet_term(labels, clean, adv, margin=1.0, num_classes=2, seed=0)
    # ex0: d(adv0, clean0) = 1, d(adv0, clean1) = 1 -> 1; ex1: d = .5, d(adv1, clean0) = 1.5 -> 0.
    np.testing.assert_allclose(h.numpy(), [1.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------- the triplet's design space


def test_cosine_distance_is_one_minus_cos_and_blind_to_feature_scale():
    a = tf.constant([[1.0, 0.0, 1.0], [3.0, 4.0, 0.0]])
    b = tf.constant([[0.0, 2.0, 2.0], [-3.0, -4.0, 0.0]])
    d = losses.logit_distance(a, b, distance="cosine").numpy()
    np.testing.assert_allclose(d, [1 - 2 / (np.sqrt(2) * np.sqrt(8)), 2.0], atol=1e-6)
    scale = tf.constant([[7.0], [0.01]])
    np.testing.assert_allclose(losses.logit_distance(a * scale, b, distance="cosine").numpy(), d, atol=1e-6)
    np.testing.assert_allclose(losses.logit_distance(a, b * 3.0, distance="cosine").numpy(), d, atol=1e-6)
    # The other distances are not (which is why the test can tell them apart).
    assert abs(float(losses.logit_distance(a * scale, b, "l2")[0]) - float(losses.logit_distance(a, b, "l2")[0])) > 1
    h = losses.triplet_hinge(a * 5.0, b, -b * 2.0, margin=0.1, distance="cosine").numpy()
    np.testing.assert_allclose(h, losses.triplet_hinge(a, b, -b, margin=0.1, distance="cosine").numpy(), atol=1e-6)


@pytest.mark.parametrize("distance", losses.DISTANCES)
def test_pairwise_distances_agree_with_the_row_wise_ones(distance):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)).astype("float32"), rng.normal(size=(4, 7)).astype("float32")
    pair = losses.pairwise_distance(tf.constant(a), tf.constant(b), distance).numpy()
    for i in range(5):
        rows = losses.logit_distance(tf.constant(np.repeat(a[i:i + 1], 4, 0)), tf.constant(b), distance)
        np.testing.assert_allclose(pair[i], rows.numpy(), rtol=1e-4, atol=1e-5)


def test_hardest_negative_is_the_nearest_clean_example_of_another_class():
    # Anchors (adversarial features) and a clean batch built by hand, labels 0, 0, 1, 2.
    labels = tf.constant([0, 0, 1, 2])
    clean = tf.constant([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [0.0, 2.0]])
    anchors = tf.constant([[0.2, 0.0], [2.0, 1.9], [0.1, 0.1], [2.6, 0.1]])
    idx, valid = losses.hardest_negatives(labels, anchors, clean, distance="linf")
    assert valid.numpy().all()
    # L-inf distances to the other-class candidates (same-class ones never count):
    # ex0 (y 0): c2 2.8, c3 2.0 -> 3 (the same-class c1 at 0.1 is nearer still);
    # ex1 (y 0): c2 1.9, c3 2.0 -> 2; ex2 (y 1): c0 0.1, c1 0.1, c3 1.9 -> 0 or 1;
    # ex3 (y 2): c0 2.6, c1 2.5, c2 0.4 -> 2.
    got = idx.numpy()
    assert got[0] == 3 and got[1] == 2 and got[2] in (0, 1) and got[3] == 2
    # The random rule (the paper's) picks by the class the adversarial is pushed to instead.
    adv_logits = tf.one_hot([1, 1, 0, 0], 3) * 5.0
    rnd, _ = losses.select_negatives(labels, adv_logits, num_classes=3, seed=0)
    assert rnd.numpy()[0] == 2  # Class 1, though example 3 is the nearest.
    # Under L2 the nearest differs from L-inf's: for ex1, c3 (2.00) beats c2 (2.15).
    idx_l2, _ = losses.hardest_negatives(labels, anchors, clean, distance="l2")
    assert idx_l2.numpy()[1] == 3


def test_hardest_negatives_in_the_triplet_term_and_no_candidate_gives_zero():
    labels = tf.constant([0, 1, 1])
    clean = tf.constant([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    adv = tf.constant([[0.5, 0.0], [0.0, 0.0], [4.0, 0.0]])
    h = losses.triplet_term(labels, clean, adv, margin=1.0, num_classes=2, negative="hardest", distance="l1")
    # ex0: neg 1 (d .5): .5 - .5 + 1 = 1; ex1: neg 0 (d 0): 1 - 0 + 1 = 2; ex2: neg 0 (d 4): 1 - 4 + 1 < 0.
    np.testing.assert_allclose(h.numpy(), [1.0, 2.0, 0.0], atol=1e-6)
    same = tf.constant([2, 2, 2])
    h = losses.triplet_term(same, clean, adv, margin=1.0, num_classes=3, negative="hardest")
    np.testing.assert_array_equal(h.numpy(), np.zeros(3))
    with pytest.raises(ValueError, match="negative='semi'"):
        losses.triplet_term(labels, clean, adv, margin=1.0, num_classes=2, negative="semi")


# ---------------------------------------------------------------- TRADES / MART pieces


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kl_and_boosted_cross_entropy_by_hand():
    rng = np.random.default_rng(1)
    p_logits, q_logits = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    y = np.array([0, 1, 2, 3, 0, 1])
    p, q = _softmax(p_logits), _softmax(q_logits)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(losses.kl_divergence(p_logits, q_logits).numpy(), kl, rtol=1e-4)
    assert np.abs(kl - (q * (np.log(q) - np.log(p))).sum(-1)).max() > 0.1  # Direction matters here.
    q_other = np.where(np.eye(4)[y] > 0, -np.inf, q).max(-1)
    bce = -np.log(q[np.arange(6), y]) - np.log(1 - q_other)
    np.testing.assert_allclose(losses.boosted_cross_entropy(y, q_logits).numpy(), bce, rtol=1e-4)
    # Exact where 1 - p is tiny: no log(0) and no 1e-4 floor (the authors' 1.0001 - p).
    sure = np.array([[0.0, 30.0, 0.0]])
    assert np.isfinite(losses.boosted_cross_entropy(np.array([0]), sure).numpy()).all()
    assert float(losses.boosted_cross_entropy(np.array([0]), sure)[0]) > 55
