r"""Every speed measurement of at2l_tf, in families of figures run by this one driver.

    python benchmarks/speed.py --output_json=benchmarks/results/speed_cpu.json   # training, attacks: ~20 min
    python benchmarks/speed.py --figures=apgd_vs_art,pgd_vs_foolbox              # figures, and their families
    python benchmarks/speed.py --family=precision,profile --output_json=/tmp/speed.json
    python benchmarks/speed.py --family=recipe_cost --nopipeline --recipe=flags/cifar10_trades.flags
    python benchmarks/speed.py --family=<name>[,<name>] --quick                    # < 1 min each
    python benchmarks/speed.py --markdown_from=benchmarks/results/speed_precision_cpu.json

A family is a module (`speed_<family>.py`: `NAME`, `FIGURES` that `--figures` picks from,
`SETTINGS` with its defaults, `configure`, `measure`, and `report` or `SHOW`); what each
times is in benchmarks/README.md, "What each family times". This driver owns what they
share: the flags (a family's defaults in `--help`; `--batch_size`, `--eps`, `--seed` are the
train command's, 128, 0.3 and 0 here), the checks before any work, the device, and the JSON:
the run's provenance, `families` (rewritten after each), and per family its `settings`,
`load`, `wall_s` and record. `--markdown_from` prints the families' reports of a results
JSON, this driver's or one of the scripts it replaced (its `benchmark` names the families).
"""

import json
import os
import sys
import time

# at2l_tf first: it sets TensorFlow's environment defaults (oneDNN), which TensorFlow reads
# once when it loads, so the benchmark runs TensorFlow as the train command does.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib
import provenance
import speed_attack_precision
import speed_attacks
import speed_precision
import speed_profile
import speed_recipe_cost
import speed_training
from absl import flags

from at2l_tf import cli, models
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json

FAMILIES = {f.NAME: f for f in (speed_training, speed_attacks, speed_precision, speed_attack_precision,
                                 speed_profile, speed_recipe_cost)}
DEFAULT_FAMILIES = ("training", "attacks")
# The `benchmark` of a JSON written by a script this driver replaced -> its families.
LEGACY = {"speed": ("training", "attacks"), "speed_precision": ("precision",), "profile_attacks": ("profile",),
          "pipeline_speed": ("recipe_cost",)}


def _defaults(name):
    """`--help`'s note of each family's default of setting `name`."""
    notes = []
    for family, module in FAMILIES.items():
        full, quick = [",".join(v) if isinstance(v, list) else v for v in module.SETTINGS.get(name) or (None,) * 2]
        if full is not None:
            notes.append(f"{family} {full}" + (f" (--quick: {quick})" if quick != full else ""))
    return "; ".join(notes)


flags.DEFINE_string("family", None, f"Families, comma-separated (default {','.join(DEFAULT_FAMILIES)}): "
                    f"{', '.join(FAMILIES)}.")
flags.DEFINE_list("figures", None, "Figures to measure (default all of the families): "
                  + "; ".join(f"{n}: {', '.join(f.FIGURES)}" for n, f in FAMILIES.items() if f.FIGURES) + ".")
flags.DEFINE_bool("quick", False, "Short runs, for tests (< 1 min per family).")
flags.DEFINE_string("output_json", None, "Where to write the results JSON (after each family, atomically).")
flags.DEFINE_string("markdown_from", None, "Print the families' reports of this results JSON and exit.")
flags.DEFINE_list("models", None, f"MNIST models: {_defaults('models')}.")
flags.DEFINE_integer("repeats", None, f"Timed rounds: {_defaults('repeats')}.")
flags.DEFINE_integer("warmup", None, f"Untimed calls of each contender first: {_defaults('warmup')}.")
flags.DEFINE_integer("calls", None, f"Calls (training steps) per contender per round: {_defaults('calls')}.")
flags.DEFINE_integer("pgd_steps", None, f"PGD steps k of the attacks: {_defaults('pgd_steps')}.")
flags.DEFINE_integer("apgd_steps", None, f"APGD iterations: {_defaults('apgd_steps')}.")
flags.DEFINE_bool("xla", None, "Also time with jit_compile=True: training, attacks on (--quick: off).")
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu hides every GPU; gpu uses TensorFlow's default.")
for _name in ("batch_size", "eps", "seed"):  # The train command's flags (speed_recipe_cost imports it).
    flags.declare_key_flag(_name)
for _family in FAMILIES.values():
    flags.adopt_module_key_flags(_family)
FLAGS = flags.FLAGS


def family_records(result):
    """`(family module, record)` of each family of a results JSON: in this driver's, the family's
    entry beside the run's provenance; in one of a script it replaced, the whole JSON."""
    if "families" in result:
        return [(FAMILIES[n], {**result, **result[n]}) for n in result["families"]]
    if result.get("benchmark") not in LEGACY:
        raise ConfigError(f"not a speed results JSON: benchmark {result.get('benchmark')!r}")
    return [(FAMILIES[n], result) for n in LEGACY[result["benchmark"]]]


def check_mnist_models(names):
    """Raises a one-line ConfigError unless every name is a registered MNIST model."""
    if not names:
        raise ConfigError("--models names no model")
    mnist = [m for m in models.available_models() if models.get_entry(m).dataset == "mnist"]
    for name in names:
        entry = models.get_entry(name)  # Unknown: ConfigError listing the known models.
        if entry.dataset != "mnist":
            raise ConfigError(f"model {name!r} is a {entry.dataset} model; the benchmarks run on MNIST: "
                              f"{', '.join(mnist)}")


def plan():
    """`[(family, settings)]` of this command, every setting checked before any work."""
    names = [n.strip() for n in FLAGS.family.split(",")] if FLAGS.family else None
    for name in names or []:
        if name not in FAMILIES:
            raise ConfigError(f"unknown family {name!r}; known families: {', '.join(FAMILIES)}")
    if names is None and FLAGS.figures is None:
        names = DEFAULT_FAMILIES
    pool = [n for n in FAMILIES if names is None or n in names]  # --figures alone: every family's.
    every = [f for n in pool for f in FAMILIES[n].FIGURES]
    figures = every if FLAGS.figures is None else [f.strip() for f in FLAGS.figures]
    unknown = [f for f in figures if f not in every]
    if unknown or not figures and every:
        what = f"unknown figure {unknown[0]!r}" if unknown else "--figures names no figure"
        raise ConfigError(f"{what}; known figures: {', '.join(every) or 'none (these families have none to pick)'}")
    if names is None:
        names = [n for n in pool if set(FAMILIES[n].FIGURES) & set(figures)]
    out = []
    for name, fam in FAMILIES.items():
        if name not in names or fam.FIGURES and not set(fam.FIGURES) & set(figures):
            continue
        cfg = {"quick": FLAGS.quick, "figures": [f for f in fam.FIGURES if f in figures]}
        for key, default in fam.SETTINGS.items():
            cfg[key] = FLAGS[key].value if FLAGS[key].present or default is None else default[FLAGS.quick]
        for key, value in cfg.items():
            low = 0 if key in ("warmup", "seed") else 1
            if type(value) is int and value < low:
                raise ConfigError(f"{key} must be >= {low}, received {key}={value}")
        if "eps" in cfg and not 0 < cfg["eps"] <= 1:
            raise ConfigError(f"eps must be in (0, 1], received eps={cfg['eps']}")
        if "models" in cfg:
            check_mnist_models(cfg["models"])
        fam.configure(cfg)
        out.append((fam, cfg))
    return out


def report(family, record):
    """Prints the family's report of its record (`benchlib.model_report` unless it has its own)."""
    lines = family.report(record) if hasattr(family, "report") else benchlib.model_report(record, family)
    if lines:  # A family with none of its figures in the record has none.
        print("\n".join(lines))


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.markdown_from:
        with open(FLAGS.markdown_from) as f:
            for fam, record in family_records(json.load(f)):
                report(fam, record)
        return
    todo = plan()
    import tensorflow as tf

    if FLAGS.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    # Each model traces its own functions; TensorFlow's retracing heuristic counts those as
    # retraces of one function and warns.
    tf.get_logger().setLevel("ERROR")
    started, result = time.time(), {"benchmark": "speed", "quick": FLAGS.quick, "families": []}
    for fam, cfg in todo:
        benchlib.log(f"family {fam.NAME} ...")
        load, start = os.getloadavg(), time.perf_counter()
        record = fam.measure(cfg)
        result[fam.NAME] = {"settings": cfg, **record, "wall_s": round(time.perf_counter() - start, 1),
                            "load": {"load_avg_start": [round(v, 2) for v in load],
                                     "load_avg_end": [round(v, 2) for v in os.getloadavg()]}}
        result["families"].append(fam.NAME)
        result.update(provenance.provenance("speed.py", started), peak_rss_mb=provenance.peak_rss_mb(),
                      versions=provenance.versions("art" in sys.modules, "foolbox" in sys.modules))
        result["machine"].update(device=FLAGS.device, tf_threads={  # 0: TensorFlow picks (one per core).
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()})
        report(fam, {**result, **result[fam.NAME]})
        if FLAGS.output_json:
            atomic_write_json(FLAGS.output_json, result)


if __name__ == "__main__":
    cli.run(main, "speed")
