"""Adaptive attacks for defence layers: which `model_fn` each attack runs on.

A defence layer in front of a classifier can make a plain gradient attack
useless without making the model robust (Athalye, Carlini, Wagner, ICML 2018):
the thermometer code has zero gradient, random resizing gives a different
gradient on every call. `adapt(specs, ...)` gives each attack the function it
should differentiate:

* `mode="auto"` (the default of `evaluate` and of the train command's final
  check): gradient attacks (every attack that is not black-box) run on the
  layer's own adaptive attack (`layer.adaptive_attack`): BPDA for the
  thermometer code (`attacks.bpda`: exact forward, the ramp's gradient
  backward), EOT for randomization (`attacks.eot`: mean logits over `draws`
  draws). Black-box attacks (Square) query the defended model itself.
* `mode="none"`: every attack runs on the defended model as it is — the naive,
  masked numbers, for comparison.
* `mode="bpda"` / `"eot"`: that wrapper, which must match the layer.

Attacks that take the encoded input (LS-PGA, `inputs="thermometer"`) always run on
the network behind the encoding, with its levels, whatever the mode.
The adversarials are judged on the defended model itself.

With `search=(search_model_fn, search_net_fn)` (a reduced-precision copy of
the model, `--attack_precision=bfloat16`), every attack runs on an
`attacks.search.SearchModel`: the same wrapper built on the copy for the
search, and on the float32 model for the verdicts.
"""

import dataclasses

from at2l_tf import attacks, defenses
from at2l_tf.attacks.bpda import bpda_model_fn
from at2l_tf.attacks.eot import eot_model_fn
from at2l_tf.attacks.search import SearchModel
from at2l_tf.errors import ConfigError

MODES = ("auto", "none", "bpda", "eot")
DEFAULT_EOT_DRAWS = 20


def check_mode(mode):
    """Raises `ConfigError` unless `mode` is one of `MODES`."""
    if mode not in MODES:
        raise ConfigError(f"adaptive must be one of {', '.join(MODES)}, received adaptive={mode!r}")


def adapt(specs, *, layer, net_fn, model_fn, mode="auto", eot_draws=DEFAULT_EOT_DRAWS, search=None):
    """Returns `specs` with each attack's `model_fn` and `adaptive` note set.

    Args:
        specs: `AttackSpec`s.
        layer: the defence layer in front of the classifier, or `None`.
        net_fn: the network behind `layer` (its outputs → logits); `None` without a layer.
        model_fn: the whole defended model (images → logits).
        mode: one of `MODES`.
        eot_draws: draws of the EOT wrapper.
        search: optional `(model_fn, net_fn)` of a reduced-precision copy
            of the model (the same layer in front, `net_fn` `None` without
            one): each attack then runs on a `SearchModel` that searches on
            the copy (adapted as the model) and judges on the float32 model.

    Raises:
        ConfigError: unknown mode; a wrapper that does not match the layer (or
            no layer); an attack on encoded inputs without a thermometer encoding.
    """
    if search is not None:
        judged = adapt(specs, layer=layer, net_fn=net_fn, model_fn=model_fn, mode=mode,
                       eot_draws=eot_draws)
        searched = adapt(specs, layer=layer, net_fn=search[1], model_fn=search[0], mode=mode,
                         eot_draws=eot_draws)
        return [
            dataclasses.replace(j, model_fn=SearchModel(s.model_fn or search[0], j.model_fn or model_fn))
            for j, s in zip(judged, searched)
        ]
    check_mode(mode)
    kind = getattr(layer, "adaptive_attack", None)
    if mode in ("bpda", "eot") and kind != mode:
        have = "no defence layer" if layer is None else f"a {defenses.compose.layer_name(layer)} layer"
        raise ConfigError(
            f"adaptive={mode} needs a model whose defence layer it matches "
            f"({'thermometer or defense_gan' if mode == 'bpda' else 'random_resize_pad'}); this model has {have}"
        )
    wrapper = None
    if layer is not None and mode != "none":
        if kind == "bpda":
            wrapper = (bpda_model_fn(net_fn, layer), "bpda")
        elif kind == "eot":
            wrapper = (eot_model_fn(model_fn, eot_draws), f"eot({eot_draws})")
    out = []
    for spec in specs:
        entry = attacks.get_entry(spec.name)
        if entry.inputs == "thermometer":
            if not isinstance(layer, defenses.ThermometerEncoding):
                raise ConfigError(
                    f"attack {spec.name!r} attacks the classifier behind a thermometer "
                    "encoding, and this model has none"
                )
            params = dict(spec.params, levels=layer.levels)
            out.append(dataclasses.replace(spec, params=params, model_fn=net_fn,
                                           adaptive="behind thermometer"))
        elif wrapper is not None and not entry.black_box:
            out.append(dataclasses.replace(spec, model_fn=wrapper[0], adaptive=wrapper[1]))
        else:
            out.append(spec)
    return out
