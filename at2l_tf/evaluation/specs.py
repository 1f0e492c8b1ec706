"""The attacks an evaluation runs (phase 4): one `AttackSpec` per attack, at one eps.

`attack_specs` resolves every parameter (the user's, else the attack's own
default), so that the report and the work directory's identity record the
values used; `attack_specs_for` then puts each white-box attack on what it
must differentiate (the adaptive attack through a defence layer, the bfloat16
search copy), and `attack_sources` does the same for transfer sources.
"""

from at2l_tf import attacks, data
from at2l_tf.attacks import iterative
from at2l_tf.attacks.search import SearchModel
from at2l_tf.evaluation import adaptive
from at2l_tf.evaluation.report import AttackSpec
from at2l_tf.log import log


def resolve_eps(config, dataset, image_dir=None):
    """`config.attacks.eps`, or the dataset's default radius."""
    eps = config.attacks.eps
    return data.get_spec(dataset, image_dir=image_dir).default_eps if eps is None else eps


def attack_specs(attacks_section, eps):
    """One `AttackSpec` per attack of `attacks_section`, at radius `eps`.

    Each attack gets `eps` and `seed` if it takes them, and its own parameters;
    unset ones resolve to the function's defaults here (`step_size=None` stays
    `None`: it depends on eps and steps, and the attack computes it), so the
    report records the values used.

    Returns:
        A list of `evaluation.AttackSpec`.
    """
    specs = []
    for name in attacks_section.names:
        entry = attacks.get_entry(name)
        params = {}
        if "eps" in entry.params:
            params["eps"] = eps
        if "seed" in entry.params:
            params["seed"] = attacks_section.seed
        for param in entry.user_params:
            params[param.name] = attacks_section.value(name, param)
        if "step_size" in params and "steps" in params:  # Record the iterative default used.
            params["step_size"] = iterative.default_step(eps, params["steps"], params["step_size"])
        specs.append(AttackSpec(name, {k: v for k, v in params.items() if v is not None}))
    return specs


def attack_specs_for(config, eps, loaded):
    """Phase 4: `attack_specs`, then, white-box, each attack on what it must
    differentiate (`evaluation.adaptive.adapt`: BPDA / EOT through the target's
    defence layer, LS-PGA behind the thermometer); with a bfloat16 search,
    each on a `SearchModel` pairing the bfloat16 function with its float32
    twin (which gives the verdicts).

    Args:
        config: an `EvaluationConfig`.
        eps: the resolved radius (`resolve_eps`, or one of the eps sweep).
        loaded: the `evaluation.loading.LoadedModels`.
    """
    specs = attack_specs(config.attacks, eps)
    if loaded.sources:
        return specs  # The sources' copies: `attack_sources`.
    target, a = loaded.target, config.attacks
    return adaptive.adapt(
        specs, layer=target.preprocessing, net_fn=target.net_fn, model_fn=target.model_fn,
        mode=a.adaptive, eot_draws=a.eot_draws, search=loaded.search,
    )


def attack_sources(loaded):
    """`{path: model_fn}` the attacks craft on: the sources, or their `SearchModel`s."""
    if not loaded.search_sources:
        return loaded.sources
    return {p: SearchModel(loaded.search_sources[p], fn) for p, fn in loaded.sources.items()}


def warn_weak_attacks(specs, eps):
    """Logs a warning for each attack whose steps cannot reach `eps` from the image."""
    for attack in specs:
        steps, step_size = attack.params.get("steps"), attack.params.get("step_size")
        if steps and step_size is not None and steps * step_size < eps:
            log(
                f"warning: {attack.name} makes {steps} steps of {step_size:.4g}, which cannot "
                f"reach eps={eps:.4g} from x: a weak attack; raise its steps or step size"
            )


__all__ = ["attack_sources", "attack_specs", "attack_specs_for", "resolve_eps", "warn_weak_attacks"]
