"""Gradient-masking checks: signs that gradient-based attacks overstate robustness.

A defence can look robust because it breaks the attacks' gradients rather than
because it classifies perturbed inputs correctly ("obfuscated gradients",
Athalye, Carlini & Wagner, ICML 2018). The checks below measure, on one batch,
the symptoms that AutoAttack raises as flags (Croce & Hein, ICML 2020,
fra31/auto-attack `autoattack/checks.py` and `flags_doc.md`) and the
"black-box beats white-box" warning sign of Athalye et al. (Sec. 3.1) and
Carlini et al. 2019 ("On evaluating adversarial robustness"). Each points to the
adaptive attack that evaluates such a model honestly:

* `zero_gradients` -- the input gradient of the cross-entropy is exactly zero
  for many examples. A non-differentiable layer (quantisation, thresholding,
  thermometer encoding: `tf.round`, `tf.sign` have zero or no gradient) gives
  gradient-based attacks nothing to follow. Attack it with **BPDA** (forward the
  real layer, backward through a differentiable approximation) and with a
  gradient-free attack (Square). AutoAttack tests the DLR loss at APGD's random
  start; this check uses the cross-entropy of the clean input, which also
  vanishes when the logits are so far apart that the softmax saturates in float32
  (margins around 100): there a margin loss (C&W, DLR) is the remedy.
* `randomized_outputs` -- two forward passes of the same input give different
  logits: a random layer is active at inference (random resize and pad, noise).
  One gradient sample is then a poor direction and one forward pass a noisy
  verdict. Attack it with **EOT** (average the gradient over many draws) and
  report accuracy averaged over draws.
* `probability_outputs` -- the "logits" lie in [0, 1] and sum to 1: the model
  returns softmax probabilities. Cross-entropy on them is nearly flat (the
  attacks' gradients shrink and vanish numerically) although the
  classification is unchanged. Pass the **logits** (the output of the last
  dense layer, before the softmax) to the attacks.
* `black_box_beats_white_box` -- a black-box attack (Square, transfer), which
  sees less of the model, leaves lower accuracy than every white-box attack:
  the white-box attacks were misled by masked gradients. Use an **adaptive
  attack** (BPDA / EOT for the layer at fault), or more restarts and queries,
  and report the worst case per example over all attacks.

All functions run eagerly on tensors or NumPy arrays and call `model_fn`
exactly as given: the caller binds `training=False` where it matters, so that a
layer that stays random at inference is exactly what `randomized_outputs`
catches. Nothing here prints or reads flags; `check_gradient_masking` returns
the flags that fire and the caller decides how to show them.
"""

import collections.abc

import numpy as np
import tensorflow as tf


def zero_gradient_fraction(model_fn, x, y, *, atol=0.0):
    """Share of examples whose input gradient of the cross-entropy is zero everywhere.

    Args:
        model_fn: callable mapping images to logits `(batch, classes)`.
        x: float images `(batch, ...)`.
        y: int labels `(batch,)`.
        atol: an example counts as zero-gradient when `max |∇x CE| <= atol`.
            A NaN gradient never counts as zero.

    Returns:
        A float in [0, 1]: the fraction of the batch with an all-zero gradient.
        A layer with no registered gradient (`tf.round`) counts as zero, not as
        an error.

    Raises:
        ValueError: if the batch is empty or `x` and `y` differ in length.
    """
    x, y = _batch(x, y)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model_fn(x)
        # Examples are independent at inference, so the gradient of the summed
        # loss is, row by row, each example's own gradient.
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=tf.cast(logits, tf.float32)
        )
    grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grad = np.abs(np.asarray(grad, np.float64)).reshape(len(y), -1)
    return float(np.mean(np.max(grad, axis=1) <= atol))


def output_randomness(model_fn, x, *, trials=2):
    """Largest absolute difference between the outputs of repeated forward passes.

    Args:
        model_fn: callable mapping images to logits.
        x: float images `(batch, ...)`.
        trials: number of forward passes of the same `x` (>= 2).

    Returns:
        A float: `max` over entries and pairs of passes of `|f_i(x) - f_j(x)|`;
        0.0 for a deterministic model.

    Raises:
        ValueError: if `trials < 2`.
    """
    if not isinstance(trials, int) or trials < 2:
        raise ValueError(f"trials must be an integer >= 2, received trials={trials!r}")
    return _spread(_forward_passes(model_fn, x, trials))


def looks_like_probabilities(outputs, *, atol=1e-3):
    """Whether model outputs look like softmax probabilities rather than logits.

    Args:
        outputs: model outputs `(batch, classes)` (any leading shape; the last
            axis holds the classes).
        atol: tolerance on the range [0, 1] and on the row sums.

    Returns:
        `True` if every entry lies in `[-atol, 1 + atol]` and every row sums to
        1 within `atol`; `False` otherwise, and for an empty batch.
    """
    outputs = np.asarray(outputs, np.float64)
    if outputs.size == 0 or outputs.ndim < 2:
        return False
    in_range = outputs.min() >= -atol and outputs.max() <= 1 + atol
    return bool(in_range and np.max(np.abs(outputs.sum(axis=-1) - 1)) <= atol)


def black_box_only_fooled(white_box_correct, black_box_correct):
    """Number of examples that survive every white-box attack but fall to a black-box one.

    Args:
        white_box_correct: per white-box attack, a boolean array `(batch,)`,
            True where the model is still correct under that attack. A mapping
            `{attack: array}`, a sequence of arrays, or a 2-D array (one row
            per attack).
        black_box_correct: the same for the black-box attacks.

    Returns:
        An int: the examples correct under all white-box attacks and wrong under
        at least one black-box attack. More than zero means the white-box
        attacks missed adversarial examples that exist: a sign of masked
        gradients.

    Raises:
        ValueError: if either side holds no attack, or the arrays differ in length.
    """
    white = _stack("white_box_correct", white_box_correct)
    black = _stack("black_box_correct", black_box_correct)
    if white.shape[1] != black.shape[1]:
        raise ValueError(
            "white-box and black-box arrays must have one entry per example, received "
            f"{white.shape[1]} and {black.shape[1]} examples"
        )
    return int(np.sum(white.all(axis=0) & ~black.all(axis=0)))


def check_gradient_masking(
    model_fn,
    x,
    y,
    *,
    attack_accuracy=None,
    black_box=("square",),
    zero_grad_threshold=0.1,
    randomness_atol=1e-6,
    black_box_margin=0.0,
    per_example=None,
):
    """Runs the gradient-masking checks on one batch; returns the flags that fire.

    Args:
        model_fn: callable mapping images to logits (with `training=False`
            bound by the caller).
        x: float images `(batch, ...)`.
        y: int labels `(batch,)`.
        attack_accuracy: optional `{attack label: robust accuracy}` (fractions),
            e.g. the `accuracy` entries of `robustness_report`.
        black_box: labels of the black-box attacks among the keys of
            `attack_accuracy` / `per_example`; every other label is white-box.
        zero_grad_threshold: `zero_gradients` fires when the fraction of
            zero-gradient examples exceeds this.
        randomness_atol: `randomized_outputs` fires when two forward passes
            differ by more than this.
        black_box_margin: with `attack_accuracy`, `black_box_beats_white_box`
            fires when a black-box accuracy is below the lowest white-box
            accuracy by more than this (a fraction: 0.01 = one point).
        per_example: optional `{attack label: boolean array (examples,)}`, True
            where the example is still classified correctly; the examples are
            those of the report, not necessarily `x`. When given,
            the black-box check uses it instead of `attack_accuracy` and fires
            when `black_box_only_fooled(...) > 0`.

    Returns:
        A list with one dict per flag that fires: `{"check": name, "message":
        one line, starting with the name, with the measured value and what to
        do}`, in this order of names: `"zero_gradients"`,
        `"randomized_outputs"`, `"probability_outputs"`,
        `"black_box_beats_white_box"`. Empty when
        nothing fires. The black-box check is skipped when neither
        `attack_accuracy` nor `per_example` is given, or when they lack
        either a black-box or a white-box attack.
    """
    flags = []
    zero = zero_gradient_fraction(model_fn, x, y)
    if zero > zero_grad_threshold:
        flags.append(
            _flag(
                "zero_gradients",
                f"{zero:.1%} of {len(y)} examples have an all-zero input gradient of the "
                f"cross-entropy (threshold {zero_grad_threshold:.1%}): a layer is not "
                "differentiable (quantisation, thresholding) or the softmax saturates; "
                "attack with BPDA and a gradient-free attack (Square), or a margin loss",
            )
        )
    passes = _forward_passes(model_fn, x, 2)
    spread = _spread(passes)
    if spread > randomness_atol:
        flags.append(
            _flag(
                "randomized_outputs",
                f"two forward passes of the same inputs differ by up to {spread:.3g} in the "
                f"outputs (tolerance {randomness_atol:.3g}): the model is random at "
                "inference; attack with EOT (gradients averaged over many draws) and "
                "report accuracy averaged over draws",
            )
        )
    outputs = passes[0]
    if looks_like_probabilities(outputs):
        row_error = float(np.max(np.abs(outputs.sum(axis=-1) - 1)))
        flags.append(
            _flag(
                "probability_outputs",
                f"the outputs lie in [{outputs.min():.3g}, {outputs.max():.3g}] and each "
                f"row sums to 1 within {row_error:.2g}: the model returns probabilities, "
                "whose cross-entropy gradients vanish; pass the logits (before the "
                "softmax) to the attacks",
            )
        )
    message = _black_box_message(attack_accuracy, per_example, black_box, black_box_margin)
    if message:
        flags.append(_flag("black_box_beats_white_box", message))
    return flags


def _black_box_message(attack_accuracy, per_example, black_box, margin):
    """The black-box flag's message, or None when it does not fire or cannot run."""
    black_box = set(black_box)
    if per_example is not None:
        white = {k: v for k, v in per_example.items() if k not in black_box}
        black = {k: v for k, v in per_example.items() if k in black_box}
        if not white or not black:
            return None
        count = black_box_only_fooled(white, black)
        if count == 0:
            return None
        total = len(np.asarray(next(iter(white.values()))))
        return (
            f"{count} of {total} examples survive every white-box attack "
            f"({', '.join(white)}) but fall to a black-box one ({', '.join(black)}): "
            "the white-box attacks are misled by masked gradients; use an adaptive "
            "attack (BPDA, EOT) and report the worst case per example"
        )
    if attack_accuracy is None:
        return None
    white = {k: v for k, v in attack_accuracy.items() if k not in black_box}
    black = {k: v for k, v in attack_accuracy.items() if k in black_box}
    if not white or not black:
        return None
    white_name = min(white, key=white.get)
    black_name = min(black, key=black.get)
    gap = white[white_name] - black[black_name]
    if gap <= margin:
        return None
    return (
        f"black-box {black_name} leaves {black[black_name]:.1%} accuracy, "
        f"{gap * 100:.1f} points below the strongest white-box attack "
        f"({white_name}, {white[white_name]:.1%}): the white-box attacks are misled by "
        "masked gradients; use an adaptive attack (BPDA, EOT) and report the worst case "
        "per example"
    )


def _flag(check, message):
    return {"check": check, "message": f"{check}: {message}"}


def _batch(x, y):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int64)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example, received an empty batch")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same length, received {x.shape[0]} images and "
            f"{y.shape[0]} labels"
        )
    return x, y


def _forward_passes(model_fn, x, trials):
    return [np.asarray(model_fn(x), np.float64) for _ in range(trials)]


def _spread(passes):
    stacked = np.stack(passes)
    return float(np.max(stacked.max(axis=0) - stacked.min(axis=0))) if stacked.size else 0.0


def _stack(name, correct):
    """Boolean `(attacks, batch)` array from a mapping, a sequence or a 1-/2-D array."""
    if isinstance(correct, collections.abc.Mapping):
        rows = list(correct.values())
    elif isinstance(correct, np.ndarray):
        rows = list(np.atleast_2d(correct))
    else:
        rows = list(correct)
    if not rows:
        raise ValueError(f"{name} must hold at least one attack, received {correct!r}")
    rows = [np.asarray(row, bool).reshape(-1) for row in rows]
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"{name} must hold arrays of one length (one entry per example), "
            f"received lengths {lengths}"
        )
    return np.stack(rows)
