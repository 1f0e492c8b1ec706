"""A search model that disagrees with the float32 model must not change a verdict.

`attacks.search.SearchModel(search_fn, judge_fn)`: the attacks search on
`search_fn` (in use, a bfloat16 copy) and every decision they take on a
candidate is `judge_fn`'s. Here the search model disagrees on purpose and in
float32 (so the tests do not depend on a CPU's bfloat16 numerics, which differ
between an AMD EPYC and an Intel Xeon with AMX): its logits are the model's
negated (a "liar": every correctly classified input looks misclassified to it),
or random. Each test also runs the liar alone, without a judge, to show that
the property it checks would fail if the search model's verdicts were used.
"""

import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks import apgd, search
from at2l_tf.attacks.autoattack import autoattack
from at2l_tf.attacks.square import _margin, run_square

EPS = 0.3


@pytest.fixture(scope="module")
def liar(model_fn):
    def fn(x):
        return -model_fn(x)

    return fn


def _wrong(model_fn, x, y):
    return np.argmax(np.asarray(model_fn(tf.convert_to_tensor(x))), axis=-1) != np.asarray(y)


def _margins(model_fn, x, y):
    return np.asarray(_margin(model_fn(tf.convert_to_tensor(x)), tf.constant(y, tf.int32)))


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_counts_only_candidates_the_float32_model_misclassifies(model_fn, liar, clean_batch, loss):
    x, y = clean_batch
    mixed = search.SearchModel(liar, model_fn, name="liar")
    x_out, fooled = apgd.run_apgd(mixed, x, y, loss=loss, eps=EPS, steps=5, seed=0,
                                  target_classes=3 if loss == "dlr-targeted" else None)
    fooled = np.asarray(fooled)
    # Every example it calls fooled is misclassified by the float32 model at the point returned.
    assert np.all(_wrong(model_fn, x_out, y)[fooled])
    assert mixed.take_rejected() > 0  # The liar's candidates were seen and refused.
    # The liar alone calls every example fooled at once: the property above fails.
    _, fooled_by_liar = apgd.run_apgd(liar, x, y, loss="ce", eps=EPS, steps=5, seed=0)
    assert np.all(np.asarray(fooled_by_liar)) and not np.all(_wrong(model_fn, x, y))


def test_apgd_with_an_agreeing_copy_is_apgd(model_fn, clean_batch):
    """A copy that agrees (the model itself) changes nothing: same points, same verdicts."""
    x, y = clean_batch
    plain = apgd.run_apgd(model_fn, x, y, loss="ce", eps=EPS, steps=5, seed=0)
    mixed = search.SearchModel(model_fn, model_fn)
    paired = apgd.run_apgd(mixed, x, y, loss="ce", eps=EPS, steps=5, seed=0)
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(paired[0]))
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(paired[1]))
    assert mixed.take_rejected() == 0


def test_square_fooled_is_a_float32_verdict(model_fn, liar, clean_batch):
    x, y = clean_batch
    mixed = search.SearchModel(liar, model_fn, name="liar")
    x_adv, fooled = run_square(mixed, x, y, eps=EPS, queries=30, seed=0)
    fooled = np.asarray(fooled)
    np.testing.assert_array_equal(fooled, _wrong(model_fn, x_adv, y))
    assert mixed.take_rejected() > 0
    _, fooled_by_liar = run_square(liar, x, y, eps=EPS, queries=30, seed=0)
    assert np.all(np.asarray(fooled_by_liar))  # Without a judge, the liar's verdict.


def test_square_never_keeps_a_point_worse_in_float32(model_fn, clean_batch):
    """With a search model whose margins are noise, the float32 margin of the kept
    point never rises above that of the striped start (queries=1 is the start alone)."""
    x, y = clean_batch

    def noise(x):
        return tf.random.stateless_normal((tf.shape(x)[0], 10), seed=[1, 2]) * 10.0

    start, _ = run_square(model_fn, x, y, eps=EPS, queries=1, seed=0)
    mixed = search.SearchModel(noise, model_fn, name="noise")
    guarded, _ = run_square(mixed, x, y, eps=EPS, queries=60, seed=0)
    assert np.all(_margins(model_fn, guarded, y) <= _margins(model_fn, start, y) + 1e-6)
    # The noise alone, trusted, keeps points the float32 model finds worse.
    unguarded, _ = run_square(noise, x, y, eps=EPS, queries=60, seed=0)
    assert np.any(_margins(model_fn, unguarded, y) > _margins(model_fn, start, y) + 1e-6)


def test_square_with_an_agreeing_copy_is_square(model_fn, clean_batch):
    x, y = clean_batch
    plain, f_plain = run_square(model_fn, x, y, eps=EPS, queries=40, seed=0)
    paired, f_paired = run_square(search.SearchModel(model_fn, model_fn), x, y, eps=EPS,
                                         queries=40, seed=0)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(paired))
    np.testing.assert_array_equal(np.asarray(f_plain), np.asarray(f_paired))


def test_autoattack_stages_hand_on_float32_verdicts(model_fn, liar, clean_batch):
    x, y = clean_batch
    stages = []
    mixed = search.SearchModel(liar, model_fn, name="liar")
    x_adv = autoattack(mixed, x, y, eps=EPS, steps=5, queries=20, seed=0,
                                  on_stage=lambda *a, **k: stages.append((a, k)))
    assert [a[0] for a, _ in stages][0] == "apgd_ce"
    # What the stages call fooled is what the float32 model misclassifies, at most.
    robust_left = stages[-1][0][2]
    assert len(x) - robust_left <= int(_wrong(model_fn, x_adv, y).sum())
    # Every stage reports its rejected candidates; the liar's were many.
    assert all("rejected" in k for _, k in stages) and stages[0][1]["rejected"] > 0
    # The clean check is the float32 model's: every example is attacked by the first stage.
    assert stages[0][0][1] == len(x)
