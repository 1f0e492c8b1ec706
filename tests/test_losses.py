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
    h2 = losses.triplet_hinge(anchor, positive, negative, margin=0.5, norm="l2")
    np.testing.assert_allclose(h2.numpy()[0], np.sqrt(1.25) - 1 + 0.5, atol=1e-5)
    h1 = losses.triplet_hinge(anchor, positive, negative, margin=0.0, norm="l1")
    np.testing.assert_allclose(h1.numpy(), [0.5, 0.0], atol=1e-6)


def test_bad_norm_and_margin_are_rejected():
    a = tf.zeros((2, 3))
    with pytest.raises(ValueError, match="norm=.l3."):
        losses.logit_distance(a, a, norm="l3")
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
