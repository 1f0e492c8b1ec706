"""Properties shared by the minimal-norm L2 attacks (C&W, DeepFool) on a small MNIST CNN."""

import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks import carlini_wagner_l2, deepfool


@pytest.fixture(scope="module", params=[carlini_wagner_l2, deepfool], ids=["cw", "deepfool"])
def adv_in_graph(request, model_fn, clean_batch):
    """The attack with its defaults on the clean batch, called inside a `tf.function`."""
    x, y = clean_batch
    attack = tf.function(lambda x, y: request.param(model_fn, x, y))
    return np.asarray(attack(tf.constant(x), tf.constant(y)))


def test_fools_clean_model(adv_in_graph, clean_batch, predict):
    _, y = clean_batch
    assert np.mean(predict(adv_in_graph) != y) >= 0.9


def test_output_inside_box(adv_in_graph):
    assert adv_in_graph.min() >= 0.0
    assert adv_in_graph.max() <= 1.0


def test_smaller_l2_than_cheapest_fgsm(adv_in_graph, clean_batch, predict, fgsm_min_l2, l2_norms):
    x, y = clean_batch
    both = (predict(adv_in_graph) != y) & ~np.isnan(fgsm_min_l2)
    assert both.sum() >= 0.5 * len(x)
    assert l2_norms(adv_in_graph, x)[both].mean() < fgsm_min_l2[both].mean()
