"""The tune command: a tiny KerasTuner search end to end, its objective, resume, bad input."""

import contextlib
import copy
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, config as config_lib, data, evaluation, precision, train, tune
from at2l_tf.errors import ConfigError
from at2l_tf.tune import __main__ as tune_cli  # The entry point: defines the tune flags.
from at2l_tf.tune import space as hm

# A tiny base config: 512 training images, 1 epoch of 8 steps, 128 validation images.
# The training attack is made weak on purpose (1 PGD step of 0.001), so that its
# accuracy (`val_adv_acc`) and the objective's (APGD-CE at eps 0.3) are far apart.
TINY = [
    "--model=mnist_small", "--objective=at2l", "--attack=pgd", "--attack_steps=1",
    "--attack_step_size=0.001", "--eps=0.3", "--epochs=1", "--batch_size=64",
    "--max_train_examples=512", "--validation_size=128", "--learning_rate=0.003",
    "--eval_examples=0", "--export_dir=", "--objective_attack=apgd_ce", "--objective_steps=5",
    "--objective_examples=64", "--verbose=0",
]
pytestmark = [
    # KerasTuner 1.4.8's oracle lock calls threading.currentThread().getName().
    pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:getName:DeprecationWarning"),
    # get_best_models() loads weights into a model whose optimizer is not built yet.
    pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning"),
]
TF_CHATTER = ("E0000", "I0000", "W0000", "WARNING: All log")


def _parse(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tune", *args])


def _run(*args):
    """Runs a search in-process; returns `(tuner, summary, stderr)`."""
    _parse(*args)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        tuner, summary = tune_cli.tune_from_flags()
    return tuner, summary, err.getvalue()


@pytest.fixture(autouse=True)
def _reset_flags():
    yield
    flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A search of 1 trial, resumed up to 2, then resumed with nothing left to do."""
    tune_dir = str(tmp_path_factory.mktemp("tune") / "search")
    checkpoint = os.path.join(tune_dir, "trial_0", "checkpoint.weights.h5")
    runs, mtimes = [], []
    try:
        for max_trials in (1, 2, 2):
            runs.append(_run(*TINY, f"--tune_dir={tune_dir}", f"--max_trials={max_trials}"))
            mtimes.append(os.stat(checkpoint).st_mtime_ns)
    finally:
        flags.FLAGS.unparse_flags()
    return types.SimpleNamespace(dir=tune_dir, runs=runs, mtimes=mtimes)


def _trial_lines(stderr, what):
    return [line for line in stderr.splitlines() if line.startswith("[at2l_tf] trial") and f" {what}" in line]


def test_a_two_trial_search_reports_the_objective(search):
    _, summary, _ = search.runs[1]
    trials = summary["trials"]
    assert [t["trial_id"] for t in trials] == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials)
    for t in trials:
        assert 0.0 <= t["val_robust_acc"] <= 1.0
        assert t["metrics"]["val_robust_acc"] == t["val_robust_acc"]
        assert t["best_epoch"] == 1 and t["seconds"] > 0
        assert set(t["tuned"]) == {"lambda1", "lambda2", "margin", "triplet_distance"}
        assert 0.5 <= t["tuned"]["lambda1"] <= 2 and 1e-3 <= t["tuned"]["lambda2"] <= 2
        assert 0.05 <= t["tuned"]["margin"] <= 20 and t["tuned"]["triplet_distance"] in ("linf", "l2")
    assert trials[0]["tuned"] != trials[1]["tuned"]
    best = max(trials, key=lambda t: t["val_robust_acc"])
    assert summary["best"]["trial_id"] == best["trial_id"]
    assert summary["objective"] == {
        "metric": "val_robust_acc", "direction": "max", "name": "apgd_ce", "steps": 5,
        "restarts": 1, "num_examples": 64, "eps": 0.3, "split": "validation",
    }
    on_disk = json.loads(open(os.path.join(search.dir, "summary.json")).read())
    assert on_disk == json.loads(json.dumps(summary))
    table = tune.format_table(summary)
    assert "val_robust_acc" in table.splitlines()[0]
    assert f"* {best['trial_id']} " in table


def test_the_objective_is_the_stronger_attack_not_the_training_one(search):
    tuner, summary, _ = search.runs[2]
    best = summary["best"]
    model = tuner.get_best_models(1)[0]  # The best epoch's weights.
    assert (model.lambda1, model.margin, model.triplet.distance) == (
        best["hyperparameters"]["lambda1"], best["hyperparameters"]["margin"],
        best["hyperparameters"]["triplet_distance"],
    )
    # As documented (`tune.RobustAccuracy`), robustness is judged on the classifier's float32
    # twin: under --mixed_precision=auto the trained classifier computes in bfloat16 on CPUs
    # with avx512_bf16 or AMX, whose numbers differ from CPU to CPU and from float32.
    clf = precision.to_float32(model.classifier)
    x, y = data.load_mnist_arrays("validation", validation_size=128)
    x, y = tf.constant(x[:64].astype("float32") / 255.0), tf.constant(y[:64])

    def model_fn(z):
        return clf(z, training=False)

    def accuracy(x_adv):
        return float(np.mean(np.argmax(model_fn(x_adv).numpy(), -1) == y.numpy()))

    # Recomputed by hand: APGD-CE, 5 iterations, eps 0.3, the first 64 validation images.
    stronger = accuracy(attacks.apgd_ce(model_fn, x, y, eps=0.3, steps=5))
    training_attack = accuracy(attacks.pgd(model_fn, x, y, eps=0.3, steps=1, step_size=0.001))
    assert best["val_robust_acc"] == pytest.approx(stronger, abs=1e-9)
    assert training_attack > stronger + 0.2
    trial = next(t for t in summary["trials"] if t["trial_id"] == best["trial_id"])
    assert trial["metrics"]["val_adv_acc"] > trial["val_robust_acc"] + 0.2


def test_a_second_invocation_resumes_instead_of_restarting(search):
    (_, s1, err1), (_, s2, err2), (tuner3, s3, err3) = search.runs
    assert [t["trial_id"] for t in s1["trials"]] == ["0"]
    assert "starting a random search" in err1
    assert "resuming a random search" in err2 and "1 of 2 trials done" in err2
    assert [line.split()[2] for line in _trial_lines(err2, "start")] == ["1"]  # Trial 0 kept.
    assert "2 of 2 trials done" in err3 and not _trial_lines(err3, "start")
    assert search.mtimes[0] == search.mtimes[1] == search.mtimes[2]  # Not retrained.
    assert s1["trials"][0]["val_robust_acc"] == s3["trials"][0]["val_robust_acc"]
    assert [t["val_robust_acc"] for t in s3["trials"]] == [t["val_robust_acc"] for t in s2["trials"]]
    assert s3["trials"][0]["seconds"] == s1["trials"][0]["seconds"]  # Kept across resumes.
    assert len(tuner3.oracle.trials) == 2
    assert json.loads(open(os.path.join(search.dir, "search.json")).read())["max_trials"] == 2


def test_best_flags_are_accepted_by_train_unchanged(search):
    _, summary, _ = search.runs[2]
    path = os.path.join(search.dir, "best.flags")
    text = open(path).read()
    assert text.splitlines()[0] == f"# python -m at2l_tf.train --flagfile={path}"
    train_flags = {f.name for f in flags.FLAGS.get_flags_for_module(train)}
    names = [line.split("=")[0].lstrip("-") for line in text.splitlines() if not line.startswith("#")]
    assert names and set(names) <= train_flags, set(names) - train_flags
    assert "objective" in names and "triplet_distance" in names and not {"defense", "norm"} & set(names)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", f"--flagfile={path}"])
    cfg = train.config_from_flags().validate()
    best = summary["best"]["hyperparameters"]
    assert {n: getattr(cfg.train, n) for n in ("lambda1", "lambda2", "margin", "triplet_distance")} == best
    assert (cfg.data.max_train_examples, cfg.train.epochs, cfg.model_name) == (512, 1, "mnist_small")
    assert (cfg.attack.steps, cfg.attack.step_size, cfg.export_dir) == (1, 0.001, None)


def _as_recorded_before_the_rename(tune_dir):
    """Rewrites a search's files with the names of before the rename (issue 33): `defense`
    and `norm` in search.json, summary.json and KerasTuner's state."""
    old = {"objective": "defense", "triplet_distance": "norm"}
    for name in ("search.json", "summary.json"):
        path = os.path.join(tune_dir, name)
        record = json.loads(open(path).read())
        base = record["base_config"]["train"]
        record["base_config"]["train"] = {old.get(k, k): v for k, v in base.items()}
        record["search_space"]["norms"] = record["search_space"].pop("triplet_distances")
        record["tuned"] = [old.get(n, n) for n in record["tuned"]]
        for t in record.get("trials", []):
            t["tuned"] = {old.get(k, k): v for k, v in t["tuned"].items()}
            t["hyperparameters"] = {old.get(k, k): v for k, v in t["hyperparameters"].items()}
        if record.get("best"):
            best = record["best"]["hyperparameters"]
            record["best"]["hyperparameters"] = {old.get(k, k): v for k, v in best.items()}
        open(path, "w").write(json.dumps(record))
    for root, _, files in os.walk(tune_dir):
        for name in files:
            if name.endswith(".json") and name not in ("search.json", "summary.json"):
                path = os.path.join(root, name)
                text = open(path).read()
                open(path, "w").write(text.replace('"triplet_distance"', '"norm"'))


def test_a_search_recorded_before_the_rename_resumes_with_the_new_names(search, tmp_path):
    tune_dir = str(tmp_path / "old")
    shutil.copytree(search.dir, tune_dir)
    _as_recorded_before_the_rename(tune_dir)
    assert '"norm"' in open(os.path.join(tune_dir, "trial_0", "trial.json")).read()
    tuner, summary, err = _run(*TINY, f"--tune_dir={tune_dir}", "--max_trials=3")
    assert "resuming a random search" in err and "2 of 3 trials done" in err
    _, before, _ = search.runs[2]
    assert [t["trial_id"] for t in summary["trials"]] == ["0", "1", "2"]
    assert summary["trials"][:2] == before["trials"]  # Kept, read with the new names.
    for t in summary["trials"]:
        assert set(t["tuned"]) == {"lambda1", "lambda2", "margin", "triplet_distance"}
        assert "norm" not in t["hyperparameters"] and t["tuned"]["triplet_distance"] in ("linf", "l2")
    # The new trial drew its distance from the search's own (old-named) hyperparameter: one, not two.
    values = json.loads(open(os.path.join(tune_dir, "trial_2", "trial.json")).read())["hyperparameters"]["values"]
    assert "norm" in values and "triplet_distance" not in values
    assert summary["trials"][2]["tuned"]["triplet_distance"] == values["norm"]
    lines = open(os.path.join(tune_dir, "best.flags")).read().splitlines()
    assert any(line.startswith("--triplet_distance=") for line in lines)
    assert not any(line.startswith(("--norm", "--defense")) for line in lines)


def test_resuming_with_other_settings_is_refused(search):
    before = sorted(os.listdir(search.dir))
    _parse(*TINY, f"--tune_dir={search.dir}", "--max_trials=2", "--lambda2_range=0.01,2")
    with pytest.raises(ConfigError, match=r"holds a search with other settings \(search_space.lambda2_range"):
        tune_cli.tune_from_flags()
    assert sorted(os.listdir(search.dir)) == before


def test_a_distributed_chief_resumes_a_search_made_on_one_machine(search, monkeypatch):
    # KerasTuner names its state file after KERASTUNER_TUNER_ID and reloads the oracle only
    # when it finds it: the chief must find the one-machine search's, or it starts at trial 0.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    # Finished: the chief writes its outputs without serving (KerasTuner's would wait for a worker).
    monkeypatch.setattr(keras_tuner.RandomSearch, "search", lambda *a, **k: pytest.fail("the chief served"))
    _, summary, err = _run(*TINY, f"--tune_dir={search.dir}", "--max_trials=2")
    assert f"chief 'chief' (oracle at 127.0.0.1:{port}): resuming a random search" in err
    assert "2 of 2 trials done" in err and "the search is finished; no trial to serve" in err
    _, before, _ = search.runs[2]
    assert summary["trials"] == before["trials"] and summary["best"] == before["best"]  # Seconds too.
    checkpoint = os.path.join(search.dir, "trial_0", "checkpoint.weights.h5")
    assert os.stat(checkpoint).st_mtime_ns == search.mtimes[0]


@pytest.mark.parametrize(
    "args, match",
    [
        ("--tuner=grid", "unknown tuner 'grid'; known tuners: random, bayesian, hyperband"),
        ("--max_trials=0", "max_trials must be >= 1, received max_trials=0"),
        ("--executions_per_trial=0", "executions_per_trial must be >= 1"),
        ("--lambda1_range=2,0.5", "lambda1_range must have min <= max, received lambda1_range=2,0.5"),
        ("--lambda1_range=-1,2", "lambda1_range must have min >= 0"),
        ("--lambda1_range=1", "lambda1_range must be 'min,max' (or empty to keep the base value)"),
        ("--lambda2_range=0,2", "lambda2_range is sampled on a log scale: min must be > 0, received lambda2_range=0,2"),
        ("--lambda2_range=0.1,inf", "lambda2_range must be two finite numbers"),
        ("--margin_range=a,b", "margin_range must be two numbers 'min,max', received margin_range=a,b"),
        ("--margin_range=5,1", "margin_range must have min <= max"),
        ("--triplet_distance_choices=linf,l3", "unknown triplet_distance 'l3' in triplet_distance_choices; known: linf, l2, l1"),
        ("--objective_attack=fgsm", "objective_attack must be one of apgd_ce, apgd_dlr, apgd_t, pgd"),
        ("--objective_attack=pgd --objective_steps=1",
         "the objective attack must be stronger than the training attack (pgd, steps=1)"),
        ("--objective_steps=0", "objective_steps must be >= 1, received objective_steps=0"),
        ("--objective_examples=200", "objective_examples must be <= validation_size=128"),
        ("--objective=none", "objective='none' has no λ1, λ2 or α to tune"),
        ("--objective=at --lambda1_range=", "nothing to tune: objective='at' uses lambda1"),
        ("--tuner=hyperband", "tuner=hyperband trains trials for 1 to --epochs epochs: it needs epochs >= 2"),
        ("--eps=-1", "eps must be >= 0.0, received eps=-1.0"),
        ("--objective_choices=at,none", "objective 'none' in objective_choices has nothing to tune"),
        ("--triplet_negative_choices=semi",
         "unknown triplet_negative 'semi' in triplet_negative_choices; known: random, hardest"),
        ("--triplet_features_choices=pen", "unknown triplet_features 'pen' in triplet_features_choices"),
        ("--objective=trades --beta_range=0,6", "beta_range is sampled on a log scale: min must be > 0"),
        ("--objective=trades", "nothing to tune: objective='trades' uses beta"),
        ("--triplet_distance_choices=linf,l3", "in triplet_distance_choices; known: linf, l2, l1, cosine"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, args, match):
    tune_dir = tmp_path / "t"
    _parse(*TINY, f"--tune_dir={tune_dir}", *args.split())
    with pytest.raises(ConfigError) as info:
        tune_cli.tune_from_flags()
    assert match in str(info.value) and "\n" not in str(info.value)
    assert not tune_dir.exists()


def test_a_directory_that_is_no_search_is_never_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    _parse(*TINY, f"--tune_dir={tmp_path}", "--overwrite")
    with pytest.raises(ConfigError, match="is not empty and holds no search.json"):
        tune_cli.tune_from_flags()
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_the_command_exits_1_with_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.tune", "--tuner=grid", f"--tune_dir={tmp_path / 't'}"],
        capture_output=True, text=True, env=env,
    )
    assert run.returncode == 1
    assert [l for l in run.stderr.splitlines() if l and not l.startswith(TF_CHATTER)] == [
        "tune: error: unknown tuner 'grid'; known tuners: random, bayesian, hyperband"
    ]
    assert not (tmp_path / "t").exists()


def _hypermodel(objective="at2l", space=hm.SearchSpace(), seed=3):
    base = config_lib.ExperimentConfig(
        train=config_lib.TrainConfig(objective=objective, seed=seed, lambda1=0.25, margin=7.0),
        data=config_lib.DataConfig(validation_size=128),
    )
    return tune.AT2LHyperModel(base, space, hm.ObjectiveAttack(num_examples=64))


def test_the_space_follows_the_objective_and_each_execution_gets_its_seed():
    hp = keras_tuner.HyperParameters()
    assert set(_hypermodel("at").declare(hp)) == {"lambda1"}
    hp = keras_tuner.HyperParameters()
    assert set(_hypermodel("tr").declare(hp)) == {"lambda2", "margin", "triplet_distance"}
    hp = keras_tuner.HyperParameters()
    model = _hypermodel(space=hm.SearchSpace(lambda1_range=None, margin_range=(2.0, 2.0),
                                             triplet_distances=("l1",)))
    values = model.declare(hp)
    assert values == {"lambda2": pytest.approx(1e-3), "margin": 2.0, "triplet_distance": "l1"}
    assert isinstance(hp.space[1], keras_tuner.engine.hyperparameters.Fixed)
    cfg = model.config_for({"lambda2": 0.1, "margin": 2.0, "triplet_distance": "l1", "tuner/epochs": 3},
                           execution=2)
    assert (cfg.train.lambda1, cfg.train.lambda2, cfg.train.margin, cfg.train.triplet_distance) == (
        0.25, 0.1, 2.0, "l1")
    assert cfg.train.seed == 5 and model.base_config.train.seed == 3  # seed + execution
    # KerasTuner builds once per execution with the trial's own `hp`: seeds 3, 4, then 3 again.
    model, first, second = _hypermodel("at"), keras_tuner.HyperParameters(), keras_tuner.HyperParameters()
    assert [model.build(hp).seed for hp in (first, first, second)] == [3, 4, 3]


def test_the_shipped_recipe_parses_and_validates(tmp_path):
    root = os.path.join(os.path.dirname(__file__), os.pardir, "flags")
    _parse(f"--flagfile={os.path.join(root, 'mnist_tune.flags')}", f"--tune_dir={tmp_path / 't'}")
    base, space, objective_attack, settings = tune_cli.settings_from_flags()
    assert tune.validate(base, space, objective_attack, settings) == "new"
    assert (settings.tuner, settings.max_trials) == ("random", 12)
    assert space == hm.SearchSpace((0.5, 2.0), (0.001, 2.0), (0.05, 20.0), ("linf", "l2"))
    assert objective_attack == hm.ObjectiveAttack("apgd_ce", 20, 1, 1000)
    assert (base.train.objective, base.attack.steps, base.train.epochs) == ("at2l", 5, 3)
    assert not (tmp_path / "t").exists()


def test_the_deprecated_tune_and_train_names_map_to_the_new_ones_with_one_warning_each(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "_warned", set())
    new = ["--objective=at", "--triplet_distance=l2", "--objective_choices=at,trades",
           "--triplet_distance_choices=l2,cosine"]
    old = ["--defense=at", "--triplet_distance=l2", "--defense_choices=at,trades",
           "--triplet_distance_choices=l2,cosine"]
    tiny = [a for a in TINY if not a.startswith("--objective=")]  # TINY's would disagree.
    results = []
    for args in (new, old, old):  # Mapped twice: still one line per deprecated name.
        _parse(*tiny, f"--tune_dir={tmp_path / 't'}", *args)
        base, space, _, _ = tune_cli.settings_from_flags()
        results.append((base.to_dict(), space, tune_cli.base_flag_lines()))
    assert results[0] == results[1] == results[2]
    assert space.objectives == ("at", "trades") and space.triplet_distances == ("l2", "cosine")
    lines = dict(results[1][2])
    assert (lines["objective"], lines["triplet_distance"]) == ("--objective=at", "--triplet_distance=l2")
    assert not {"defense", "norm"} & set(lines)  # best.flags carries only the new names.
    warned = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert sorted(warned) == sorted(f"[at2l_tf] warning: --{o} is deprecated; use --{n}" for o, n in (
        ("defense", "objective"), ("defense_choices", "objective_choices")))


def test_a_deprecated_tune_alias_that_disagrees_is_a_one_line_error(tmp_path):
    _parse(*TINY, f"--tune_dir={tmp_path / 't'}", "--objective_choices=at", "--defense_choices=trades")
    with pytest.raises(ConfigError, match=r"^--defense_choices is a deprecated alias of --objective_choices: give "
                                          r"only --objective_choices \(.*\), received "
                                          r"--objective_choices=at and --defense_choices=trades$"):
        tune_cli.settings_from_flags()


@pytest.mark.parametrize("given, replacement", [
    ("--norms=l2,cosine", "--triplet_distance_choices"), ("--norm=l2", "--triplet_distance"),
])
def test_the_removed_tune_and_train_names_are_one_line_errors(tmp_path, capsys, given, replacement):
    from at2l_tf import cli

    with pytest.raises(SystemExit) as info:
        cli.parse_flags("tune", ["tune", *TINY, f"--tune_dir={tmp_path / 't'}", given], removed=tune_cli.REMOVED)
    assert info.value.code == 1
    name = given.split("=")[0]
    assert capsys.readouterr().err == f"tune: error: {name} was removed: use {replacement}, received {given}\n"


def test_the_robust_accuracy_callback_survives_kerastuners_deepcopy():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int64")))
    cb = tune.RobustAccuracy(ds.batch(4), evaluation.AttackSpec("apgd_ce", {"eps": 0.3}), num_examples=4)
    twin = copy.deepcopy(cb)
    assert twin is not cb and twin.dataset is cb.dataset and twin.name == "val_robust_acc"


FULL = hm.SearchSpace(objectives=("at", "at2l", "trades"), beta_range=(1.0, 6.0),
                      triplet_features=("logits", "embedding"), triplet_negatives=("random", "hardest"))


def test_the_space_can_cover_the_objective_beta_and_the_triplet_design():
    model = _hypermodel(space=FULL)
    hp = keras_tuner.HyperParameters()
    values = model.declare(hp)
    assert list(values) == list(hm.ALL_HYPERPARAMETERS)
    assert hp.get("objective") in ("at", "at2l", "trades") and 1.0 <= hp.get("beta") <= 6.0
    drawn = {"lambda1": 0.7, "lambda2": 0.3, "margin": 2.0, "triplet_distance": "l2", "beta": 2.0,
             "triplet_features": "embedding", "triplet_negative": "hardest"}
    # Each trial takes only what its objective uses: an `at` trial stays plain AT.
    at = model.config_for({**drawn, "objective": "at"}).validate().train
    assert (at.objective, at.lambda1, at.lambda2, at.beta, at.triplet_features) == ("at", 0.7, None, None, "logits")
    assert at.describe()["triplet"] is None
    trades = model.config_for({**drawn, "objective": "trades"}).validate().train
    assert (trades.beta, trades.lambda1, trades.lambda2, trades.uses_triplet) == (2.0, 0.25, None, False)
    at2l = model.config_for({**drawn, "objective": "at2l"}).validate().train
    assert at2l.describe()["triplet"] == {"features": "embedding", "distance": "l2", "negative": "hardest",
                                          "lambda2": 0.3, "margin": 2.0}
    # Unsearched axes are not recorded, so that older searches still resume.
    assert set(hm.SearchSpace().record()) == {"lambda1_range", "lambda2_range", "margin_range",
                                              "triplet_distances"}
    assert FULL.record()["objectives"] == ("at", "at2l", "trades")


def test_best_flags_of_an_objective_search_train_what_the_trial_trained(tmp_path):
    model = _hypermodel(space=FULL)
    record = {"tuned": list(FULL.tuned("at2l")), "objective": {}}
    settings = tune.SearchSettings(tune_dir=str(tmp_path))
    base_flags = {"objective": "--objective=at2l", "lambda1": "--lambda1=0.25", "margin": "--margin=7.0"}
    reporter = tune.Reporter(settings, model.base_config, hm.ObjectiveAttack(), record, base_flags, model)
    values = reporter.effective({"objective": "at", "lambda1": 0.7, "lambda2": 0.3, "beta": 2.0,
                                 "triplet_features": "embedding", "triplet_negative": "hardest"})
    assert values == {"objective": "at", "lambda1": 0.7, "lambda2": None, "margin": 7.0,
                      "triplet_distance": "linf", "beta": None, "triplet_features": "logits",
                      "triplet_negative": "random"}
    assert reporter.used(values) == ("objective", "lambda1")
    summary = {"best": {"trial_id": "3", "val_robust_acc": 0.5, "best_epoch": 1, "hyperparameters": values},
               "trials": []}
    text = reporter.best_flags_text(summary)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert "--objective=at" in lines and "--lambda1=0.7" in lines and "--triplet_distance=linf" in lines
    assert not any(line.startswith(("--defense", "--norm")) for line in lines)  # Deprecated names.
    assert not any(line.startswith(("--lambda2", "--beta")) for line in lines)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", *lines])
    cfg = train.config_from_flags().validate()
    assert (cfg.train.objective, cfg.train.lambda1, cfg.train.describe()["triplet"]) == ("at", 0.7, None)
    table = tune.format_table({"best": None, "tuned": record["tuned"], "trials": [],
                               "base_config": model.base_config.to_dict(),
                               "objective": {"name": "apgd_ce", "steps": 1, "restarts": 1, "eps": 0.3,
                                             "num_examples": 1}})
    assert table.splitlines()[0].split()[:9] == ["trial", "status", "objective", "λ1", "λ2", "α", "distance", "β",
                                                  "features"]


def test_a_trial_warms_eps_up_as_train_does():
    """MART's default ε warm-up reaches the tuner's trials: epoch e of the ramp
    attacks at `experiment.training_eps(config, e)`, later epochs at the full ε,
    and the tuner reads one history over all epochs."""
    base = config_lib.ExperimentConfig(
        train=config_lib.TrainConfig(objective="mart", seed=0, epochs=3, eps_warmup_epochs=2),
        data=config_lib.DataConfig(validation_size=128, max_train_examples=128, batch_size=64),
        attack=config_lib.AttackConfig(steps=1),
    ).validate()
    hypermodel = tune.AT2LHyperModel(base, hm.SearchSpace(), hm.ObjectiveAttack(num_examples=64))
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)

    seen = []

    class RecordEps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, model.training_eps))

    history = hypermodel.fit(hp, model, callbacks=[RecordEps()])
    assert seen == [(0, pytest.approx(0.3 * 0.25)), (1, pytest.approx(0.3 * 0.75)), (2, pytest.approx(0.3))]
    assert history.epoch == [0, 1, 2]
    assert len(history.history["val_robust_acc"]) == 3
