r"""Runs a study: variants × seeds → train → evaluate → JSON → markdown (`studylib`, `study_runs`).

    python benchmarks/study.py --study=triplet --output_json=benchmarks/results/triplet_study_mnist.json
    python benchmarks/study.py --study=triplet ... --max_hours=2     # stop cleanly after 2 hours
    python benchmarks/study.py --study=triplet --markdown_from=benchmarks/results/triplet_study_mnist.json
    python benchmarks/study.py --study=defenses --attack=fgsm_rs --epochs=5 --variants=at,at2l \
        --study_dir=runs/compare_fgsm_rs --output_json=benchmarks/results/compare_defenses_mnist_fgsm_rs.json

`--study=<name>` is the configuration `benchmarks/studies/<name>.py` (its `STUDY`; each
table's definition is in benchmarks/README.md, beside its command).
Every flag of `python -m at2l_tf.train` is accepted too and goes to every run,
after the study's recipe (a flag the study varies is refused; `--eps` also sets the
eps its evaluation attacks at); the study sets
`--seed`, `--workdir` (`<study_dir>/runs/<variant>/s<seed>`) and `--export_dir=`.

One command runs every phase the study has (tune, pilot, runs, report), skipping
what the JSON already holds and reusing finished runs in their workdirs, so a
study spreads over several sittings; the JSON is the state (written after every
step, atomically) and `--max_hours` stops before a step that would not finish in
the time left (estimated from the steps done). The report's table is printed
at the end, and by `--markdown_from=<its JSON>` at any time.
"""

import dataclasses
import importlib.util
import json
import os

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
from at2l_tf import identity as run_identity
import study_runs  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from studylib import note  # isort: skip
from at2l_tf import train as train_command  # noqa: E402  (defines every train flag)
from at2l_tf.errors import ConfigError  # noqa: E402

STUDIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studies")
PHASES = ("tune", "pilot", "runs", "report")

FLAGS = flags.FLAGS
flags.DEFINE_string("study", None, "The study: <name> of benchmarks/studies/<name>.py, or a .py file defining STUDY.")
flags.DEFINE_string("output_json", None, "The study's state and results (required unless --markdown_from/--plot_from).")
flags.DEFINE_string("study_dir", None, "Scratch directory of its searches and runs (default runs/<study>).")
flags.DEFINE_list("variants", None, "Variants to run (default all, in the study's order).")
flags.DEFINE_list("seeds", None, "Seeds (default the study's).")
flags.DEFINE_list("phases", list(PHASES), "Phases to run.")
flags.DEFINE_integer("test_examples", None, "First N test images of the study's own evaluation (default the study's).")
flags.DEFINE_integer("trials", None, "KerasTuner trials per searched variant (default the study's).")
flags.DEFINE_float("max_hours", None, "Stop before a step that would not finish within this many hours.")
flags.DEFINE_integer("bootstrap_replicates", 2000, "Bootstrap replicates of the paired intervals.")
flags.DEFINE_string("markdown_from", None, "Print the study's table of this JSON and exit.")
flags.DEFINE_string("plot_from", None, "Draw the study's plot of this JSON (to --plot_png) and exit.")
flags.DEFINE_string("plot_png", None, "The plot's PNG; default beside the JSON, `_forest.png` (a study "
                    "drawing several figures writes them into its directory).")


def load(name):
    """`STUDY` of benchmarks/studies/<name>.py, or of the file `name` if it ends in `.py`."""
    path = name if name and name.endswith(".py") else os.path.join(STUDIES, f"{name}.py")
    if not name or not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(STUDIES) if f.endswith(".py") and not f.startswith("_"))
        raise ConfigError(f"unknown study {name!r}; known: {', '.join(known)}")
    spec = importlib.util.spec_from_file_location(f"studies.{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STUDY


def given_train_flags():
    """The train-command flags given on this command line, as `--name=value`."""
    out = []
    for name in study_runs.train_flag_names():
        if FLAGS[name].present:
            if name in ("seed", "workdir", "export_dir"):
                raise ConfigError(f"--{name} is set by the study (use --seeds, --study_dir)")
            out.append(FLAGS[name].serialize())
    return list(dict.fromkeys(out))


def configured(study):
    """`(study, variants, seeds)` as this command line narrows and overrides them; bad values
    raise a one-line ConfigError before anything runs."""
    names = FLAGS.variants or [v.name for v in study.variants]
    known = [v.name for v in study.variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; known: {', '.join(known)}")
    for a, b in study.pairs:
        if b in names and a not in names:
            raise ConfigError(f"the variants must include the reference {a!r} of {b!r}")
    for v in study.variants:
        for needed in study.needs(v):
            if v.name in names and needed not in names:
                raise ConfigError(f"the variants must include {needed!r}, whose run {v.name!r} uses")
    bad = [p for p in FLAGS.phases if p not in PHASES]
    if bad:
        raise ConfigError(f"unknown phase {bad[0]!r}; known: {', '.join(PHASES)}")
    seeds = [str(s) for s in study.seeds] if FLAGS.seeds is None else FLAGS.seeds
    for s in seeds:
        if not s.isdigit():
            raise ConfigError(f"seeds must be non-negative integers, received {s!r}")
    for name in ("trials", "test_examples", "bootstrap_replicates"):
        if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
            raise ConfigError(f"{name} must be >= 1, received {name}={getattr(FLAGS, name)}")
    if study.tuning and FLAGS.trials is not None:
        study = dataclasses.replace(study, tuning=dataclasses.replace(study.tuning, trials=FLAGS.trials))
    if FLAGS["eps"].present:  # One threat model: the runs train at --eps and are judged at it.
        attacks = tuple(dataclasses.replace(a, params={**a.params, "eps": FLAGS.eps}) if "eps" in a.params else a
                        for a in study.evaluation.attacks)
        evaluation = dataclasses.replace(study.evaluation, eps=FLAGS.eps, attacks=attacks)
        study = dataclasses.replace(study, evaluation=evaluation)
    if FLAGS.test_examples is not None:
        evaluation = dataclasses.replace(study.evaluation, examples=FLAGS.test_examples)
        study = dataclasses.replace(study, evaluation=evaluation)
    return study, names, [int(s) for s in seeds]


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    study = load(FLAGS.study)
    if FLAGS.markdown_from or FLAGS.plot_from:
        with open(FLAGS.markdown_from or FLAGS.plot_from) as f:  # Old names read as today's.
            record = run_identity.renamed(json.load(f))
        if FLAGS.markdown_from:
            print(study.table(record))
        elif not study.plot:
            raise ConfigError(f"study {study.name!r} draws no plot")
        else:
            note(f"wrote {study.plot(record, FLAGS.plot_png or _png(FLAGS.plot_from))}")
        return
    if not FLAGS.output_json:
        raise ConfigError("--output_json is required (the study's state)")
    study, names, seeds = configured(study)
    driver = study_runs.Driver(  # Checks every variant's configuration before anything is written.
        study, variants=names, seeds=seeds, train_flags=given_train_flags(),
        study_dir=FLAGS.study_dir or os.path.join("runs", study.name),
        budget=study_runs.Budget(FLAGS.max_hours), replicates=FLAGS.bootstrap_replicates)
    driver.state = study_runs.State(FLAGS.output_json, study.name)
    driver.state.data["settings"] = driver.settings()
    driver.run(FLAGS.phases)
    state = driver.state.data
    if "report" in FLAGS.phases and state["runs"]:
        if study.plot:
            try:
                note(f"wrote {study.plot(state, FLAGS.plot_png or _png(FLAGS.output_json))}")
            except ConfigError as e:
                note(f"no plot: {e}")
        print(study.table(state))
    note(f"wrote {FLAGS.output_json} ({'complete' if state['complete'] else 'to be continued'})")


def _png(json_path):
    return os.path.splitext(json_path)[0] + "_forest.png"


if __name__ == "__main__":
    cli.run(main, "study", removed=train_command.REMOVED)
