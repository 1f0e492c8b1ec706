"""The training objectives, one small class each; the triplet term is added on top.

For a mini-batch `(x, y)` of k examples, `x'` (`x_adv`) its adversarial
version crafted by the objective's inner attack against the current weights
(model in inference mode), `f` the logits and `p = softmax(f)`, each objective
is the batch mean of a per-example loss `ℓ_i` (`per_example_loss`):

* `none`:   `ℓ = CE(f(x), y)`; clean training, no attack.
* `at`:     `ℓ = [CE(f(x), y) + λ1 CE(f(x'), y)] / (1 + λ1)`                (the paper's Eq. 1)
            with x' by the configured attack (`--attack`, PGD by default).
* `trades`: `ℓ = CE(f(x), y) + β KL(p(x) ‖ p(x'))`                       (Zhang et al., 2019)
            with x' by `attacks.trades_kl`: PGD on that KL from x + 0.001·N(0, 1).
* `mart`:   `ℓ = BCE(p(x'), y) + β KL(p(x) ‖ p(x')) (1 − p_y(x))`,       (Wang et al., 2020)
            `BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k)`, with x' by the
            configured attack (PGD on CE).

The triplet term of AT²L (the paper's Eq. 2) is a separate regularizer,
`TripletRegularizer`, that adds `λ2/k Σ_i h_i` to any of them:

    L = 1/k Σ_i ℓ_i + λ2/k Σ_i max( d(g(x'_i), g(x_i)) − d(g(x'_i), g(x_n_i)) + α, 0 )

with `g` the logits (paper) or the penultimate features, `d` the distance
and `x_n` the in-batch negative (`losses.triplet_term`). It needs x', so
with `none` it is not available (clean CE + triplet is the `tr` recipe).

**Recipes.** The `--objective` names (`CHOICES`) are recipes: an objective's loss
(`LOSSES`, one `Objective` class each) and whether the paper's triplet term is on
by default (`RECIPES`):

    none -> none          at -> at          at2l -> at + triplet (Eq. 2)
    tr   -> none + triplet (on x' from the configured attack; the paper's Fig. 3)
    trades -> trades      mart -> mart

λ2 (`resolve_lambda2`): unset (`None`) means 0.5, the paper's, for `at2l` and
`tr`, and 0 (no triplet) for `at`, `trades` and `mart`; a λ2 > 0 adds the
triplet term to `at`, `trades` or `mart` too. `none` ignores λ2 (it has no x').

β (`resolve_beta`): unset means 1.0 for TRADES — its published MNIST value,
MNIST being this package's default dataset (its CIFAR-10 value is 6) — and
6.0 for MART, its published value (CIFAR-10, the only one published with it).

ε warm-up (`resolve_eps_warmup`): unset means min(2, epochs − 1) epochs for
MART and 0 for every other objective (their flagfiles keep their meaning); see
`MART` for why MART needs one.

**Where the authors' code and the papers differ, the papers are implemented:**
TRADES' code sums the KL over the batch and divides by the batch size, which
is the batch mean of the per-example KL sums used here (the same number). MART's
code computes `log(1.0001 − p + 1e-12)` and `(1.0000001 − p_y)`; here
`log(1 − p)` is exact (log-sum-exp) and the weight is `1 − p_y`. MART's code
starts its PGD from x + 0.001·N(0, 1); here x' comes from the configured
training attack (PGD starts uniformly in the ball). Gradients flow through
every term, the clean probabilities in the KL and MART's weight included, as
in both papers' losses. Every loss runs in float32 (logits are cast), whatever
the model's dtype policy.
"""

import tensorflow as tf

from at2l_tf import losses

CHOICES = ("none", "at", "at2l", "tr", "trades", "mart")  # --objective
LOSSES = ("none", "at", "trades", "mart")  # `Objective.name`
TRIPLET_FEATURES = ("logits", "embedding")
TRIPLET_DISTANCES = losses.DISTANCES
TRIPLET_NEGATIVES = losses.NEGATIVES

# --objective -> (objective, the paper's triplet term on by default).
RECIPES = {
    "none": ("none", False),
    "at": ("at", False),
    "at2l": ("at", True),
    "tr": ("none", True),
    "trades": ("trades", False),
    "mart": ("mart", False),
}
PAPER_LAMBDA2 = 0.5
DEFAULT_BETA = {"trades": 1.0, "mart": 6.0}
DEFAULT_EPS_WARMUP_EPOCHS = {"mart": 2}


def check_objective(objective):
    if objective not in RECIPES:
        raise ValueError(f"objective must be one of {CHOICES}, received objective={objective!r}")


def resolve_lambda2(objective, lambda2):
    """λ2 of `objective`: `lambda2`, or when `None` 0.5 for `at2l` / `tr` and 0 otherwise."""
    check_objective(objective)
    if objective == "none":
        return 0.0
    if lambda2 is None:
        return PAPER_LAMBDA2 if RECIPES[objective][1] else 0.0
    return float(lambda2)


def uses_triplet(objective, lambda2):
    """Whether `objective` with `lambda2` (possibly `None`) trains with the triplet term.

    `at2l` and `tr` always do (λ2 = 0 then only records the term); `at`,
    `trades`, `mart` when λ2 > 0; `none` never.
    """
    check_objective(objective)
    if objective == "none":
        return False
    return RECIPES[objective][1] or resolve_lambda2(objective, lambda2) > 0


def uses_beta(objective):
    return RECIPES.get(objective, (None,))[0] in DEFAULT_BETA


def resolve_beta(objective, beta):
    """β of `objective`: `beta`, or when `None` its loss' default (`DEFAULT_BETA`); None if unused."""
    check_objective(objective)
    loss = RECIPES[objective][0]
    if loss not in DEFAULT_BETA:
        return None
    return DEFAULT_BETA[loss] if beta is None else float(beta)


def resolve_eps_warmup(objective, eps_warmup_epochs, epochs):
    """N, the ε warm-up of `objective` in epochs: `eps_warmup_epochs`, or when `None`
    its loss' default (`DEFAULT_EPS_WARMUP_EPOCHS`, at most `epochs − 1` so
    that the last epoch trains at the full ε), else 0."""
    check_objective(objective)
    if eps_warmup_epochs is not None:
        return int(eps_warmup_epochs)
    default = DEFAULT_EPS_WARMUP_EPOCHS.get(RECIPES[objective][0], 0)
    return max(0, min(default, int(epochs) - 1))


class Objective:
    """A training objective: a per-example loss from clean and adversarial logits.

    Attributes:
        name: one of `LOSSES`.
        attack_loss: what its inner attack maximizes (`"ce"`, `"kl"`), or None
            when it crafts no adversarial examples.
        needs_adversarial: whether `per_example_loss` reads `adv_logits`.
    """

    name = None
    attack_loss = "ce"
    needs_adversarial = True

    def inner_attack(self, configured):
        """The training attack's registry name, given the configured `--attack`."""
        return configured

    def per_example_loss(self, y, clean_logits, adv_logits):
        """`ℓ_i`, a float32 `(k,)` tensor; the model divides its sum by the global batch size."""
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "attack_loss": self.attack_loss}


class Clean(Objective):
    """`none`: `CE(f(x), y)`; no attack."""

    name = "none"
    attack_loss = None
    needs_adversarial = False

    def per_example_loss(self, y, clean_logits, adv_logits=None):
        return losses.cross_entropy(y, clean_logits)


class AdversarialTraining(Objective):
    """`at`, the paper's Eq. 1: `[CE(f(x), y) + λ1 CE(f(x'), y)] / (1 + λ1)`.

    Args:
        lambda1: λ1 >= 0, the weight of the adversarial cross-entropy.
    """

    name = "at"

    def __init__(self, lambda1=1.0):
        if lambda1 < 0:
            raise ValueError(f"lambda1 must be >= 0, received lambda1={lambda1}")
        self.lambda1 = float(lambda1)

    def per_example_loss(self, y, clean_logits, adv_logits):
        ce_clean = losses.cross_entropy(y, clean_logits)
        ce_adv = losses.cross_entropy(y, adv_logits)
        return (ce_clean + self.lambda1 * ce_adv) / (1.0 + self.lambda1)

    def get_config(self):
        return {**super().get_config(), "lambda1": self.lambda1}


class TRADES(Objective):
    """TRADES: `CE(f(x), y) + β KL(softmax f(x) ‖ softmax f(x'))`, x' from the KL attack.

    Args:
        beta: β >= 0 (`None`: 1.0, TRADES' MNIST value; 6.0 is its CIFAR-10 one).
    """

    name = "trades"
    attack_loss = "kl"

    def __init__(self, beta=None):
        self.beta = _check_beta(DEFAULT_BETA["trades"] if beta is None else beta)

    def inner_attack(self, configured):
        # The KL attack is part of the method: it replaces the CE attack `--attack` names.
        if configured not in ("pgd", "trades_kl"):
            raise ValueError(
                "objective 'trades' crafts x' with its own KL attack (trades_kl): leave --attack "
                f"at pgd or set it to trades_kl, received attack={configured!r}"
            )
        return "trades_kl"

    def per_example_loss(self, y, clean_logits, adv_logits):
        return losses.cross_entropy(y, clean_logits) + self.beta * losses.kl_divergence(
            clean_logits, adv_logits
        )

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


class MART(Objective):
    """MART: `BCE(p(x'), y) + β KL(p(x) ‖ p(x')) (1 − p_y(x))`, x' by the configured CE attack.

    MART needs an ε warm-up (its default, `resolve_eps_warmup`: the first
    min(2, epochs − 1) epochs ramp ε from 0). It has no clean cross-entropy: at
    the full ε from step one, a constant classifier is a fixed point — there
    p(x) = p(x′), so KL(p(x) ‖ p(x′)) = 0 and its gradient is 0 too, and the
    only term left, BCE on x′ crafted at ε = 0.3 against an untrained
    network, does not lead out of it (measured here: MART without a warm-up
    ended at 11% clean accuracy on every seed of the triplet study,
    benchmarks/README.md). At small ε, x′ ≈ x and
    BCE(p(x′), y) is a clean loss that trains a classifier first.

    Args:
        beta: β >= 0 (`None`: 6.0, the published value).
    """

    name = "mart"

    def __init__(self, beta=None):
        self.beta = _check_beta(DEFAULT_BETA["mart"] if beta is None else beta)

    def per_example_loss(self, y, clean_logits, adv_logits):
        # p_y(x) = exp(-CE(f(x), y)).
        p_true = tf.exp(-losses.cross_entropy(y, clean_logits))
        kl = losses.kl_divergence(clean_logits, adv_logits)
        return losses.boosted_cross_entropy(y, adv_logits) + self.beta * kl * (1.0 - p_true)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


def _check_beta(beta):
    if beta < 0:
        raise ValueError(f"beta must be >= 0, received beta={beta}")
    return float(beta)


def make_objective(name, *, lambda1=1.0, beta=None):
    """The `Objective` named `name` (one of `LOSSES`)."""
    if name == "none":
        return Clean()
    if name == "at":
        return AdversarialTraining(lambda1)
    if name == "trades":
        return TRADES(beta)
    if name == "mart":
        return MART(beta)
    raise ValueError(f"loss must be one of {LOSSES}, received loss={name!r}")


def for_objective(objective, *, lambda1=1.0, beta=None):
    """The `Objective` (the loss) of the recipe `objective` (`RECIPES`)."""
    check_objective(objective)
    return make_objective(RECIPES[objective][0], lambda1=lambda1, beta=beta)


def describe(objective, *, lambda1, lambda2, beta, margin, distance, features, negative):
    """What a run trains with, for `results.json`: `{"objective", "loss", "triplet"}`.

    `objective` is the recipe (`--objective`), `loss` its `Objective`'s config;
    `triplet` is None when the term is off, else its features, distance,
    negative, λ2 and α. (Records written before the rename call the recipe
    `defense` and the loss `objective`: `identity.renamed` reads them.)
    """
    loss = for_objective(objective, lambda1=lambda1, beta=beta).get_config()
    triplet = None
    if uses_triplet(objective, lambda2):
        triplet = {
            "features": features,
            "distance": distance,
            "negative": negative,
            "lambda2": resolve_lambda2(objective, lambda2),
            "margin": float(margin),
        }
    return {"objective": objective, "loss": loss, "triplet": triplet}
