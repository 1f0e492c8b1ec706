"""The objectives and the triplet's design space from the command line: flags -> config -> model."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from at2l_tf import config as config_lib
from at2l_tf.errors import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
TF_CHATTER = ("E0000", "I0000", "W0000", "WARNING: All log")


def test_every_new_flag_reaches_the_built_model(parse):
    from at2l_tf import experiment

    cfg = parse(
        "--objective=mart", "--beta=3.5", "--lambda2=0.7", "--margin=0.2", "--triplet_features=embedding",
        "--triplet_distance=cosine", "--triplet_negative=hardest", "--attack=ifgsm", "--attack_steps=3",
        "--seed=5",
    ).validate()
    model = experiment.build_model(cfg)
    assert (model.objective_name, model.objective.name, model.beta, model.lambda2, model.margin) == (
        "mart", "mart", 3.5, 0.7, 0.2
    )
    t = model.triplet
    assert (t.features, t.distance, t.negative, t.seed) == ("embedding", "cosine", "hardest", 5)
    assert model.uses_triplet and model._forward_fn is not None  # Features from the two-output view.
    assert model.attack == "ifgsm" and model._attack_fn.bound_params == {"eps": 0.3, "steps": 3}


def test_trades_takes_its_kl_attack_with_the_attack_flags(parse):
    from at2l_tf import experiment

    cfg = parse("--objective=trades", "--attack_steps=40", "--attack_step_size=0.01").validate()
    assert cfg.training_attack == "trades_kl"
    model = experiment.build_model(cfg)
    assert (model.attack, model.beta, model.uses_triplet) == ("trades_kl", 1.0, False)
    assert model._attack_fn.bound_params == {"eps": 0.3, "steps": 40, "step_size": 0.01}


def test_the_training_log_line_names_the_objective_once(parse):
    from at2l_tf import experiment

    describe = lambda *args: experiment._describe_training(parse(*args).validate().train)  # noqa: E731
    assert describe("--objective=trades") == "objective=trades (β 1) "
    assert describe("--objective=at2l") == "objective=at2l (λ1 1) triplet=logits/linf/random λ2 0.5 α 0.5 "
    assert describe("--objective=tr", "--triplet_distance=cosine").startswith("objective=tr triplet=logits/cosine/")


def test_the_triplet_distance_flag_sets_the_distance(parse):
    assert parse("--triplet_distance=l1").train.triplet_distance == "l1"
    assert parse("--triplet_distance=cosine").train.triplet_distance == "cosine"


@pytest.fixture
def warnings_once(capsys, monkeypatch):
    """The deprecation lines logged since the test started (the once-per-process memory reset)."""
    from at2l_tf import train

    monkeypatch.setattr(train, "_warned", set())
    capsys.readouterr()
    return lambda: [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]


def test_a_deprecated_alias_sets_the_same_config_and_says_so_once(parse, warnings_once):
    old, new, value = "defense", "objective", "trades"
    expected = parse(f"--{new}={value}").to_dict()
    assert warnings_once() == []  # Only the old name warns.
    assert parse(f"--{old}={value}").to_dict() == expected
    assert parse(f"--{old}={value}").to_dict() == expected  # Mapped again (tune, benchmarks): no new line.
    assert parse(f"--{old}={value}", f"--{new}={value}").to_dict() == expected  # Agreeing: fine.
    assert warnings_once() == [f"[at2l_tf] warning: --{old} is deprecated; use --{new}"]


def test_a_deprecated_alias_that_disagrees_is_a_one_line_error(parse):
    with pytest.raises(ConfigError) as info:
        parse("--objective=trades", "--defense=at")
    assert str(info.value) == (
        "--defense is a deprecated alias of --objective: give only --objective "
        "(a later one overrides a flagfile's), received --objective=trades and --defense=at"
    )


def test_the_removed_norm_flag_is_a_one_line_error_naming_its_replacement(tmp_path, capsys):
    from absl import flags

    from at2l_tf import cli, train

    assert "norm" not in flags.FLAGS and train.REMOVED == {"norm": "triplet_distance"}
    flagfile = tmp_path / "old.flags"
    flagfile.write_text("--norm=cosine\n")
    try:
        for args, given in ((["--norm=l2"], "--norm=l2"), ([f"--flagfile={flagfile}"], "--norm=cosine")):
            capsys.readouterr()
            with pytest.raises(SystemExit) as info:
                cli.parse_flags("train", ["train", *args], removed=train.REMOVED)
            assert info.value.code == 1
            assert capsys.readouterr().err == (
                f"train: error: --norm was removed: use --triplet_distance, received {given}\n"
            )
    finally:
        flags.FLAGS.unparse_flags()


def test_the_default_workdir_names_the_objective(parse, warnings_once):
    assert parse("--defense=mart").workdir == parse("--objective=mart").workdir == "runs/mnist_mart"


def test_no_flagfile_uses_a_deprecated_name():
    root = os.path.join(ROOT, "flags")
    for name in sorted(os.listdir(root)):
        lines = open(os.path.join(root, name)).read().splitlines()
        old = [line for line in lines[1:] if re.match(r"(#.*)?--(defense|norm|norms|defense_choices)=", line)
               or re.search(r"\s--(defense|norm|norms|defense_choices)=", line)]
        assert old == [], name


@pytest.mark.parametrize(
    "args, message",
    [
        ("--objective=trades --beta=-1", "beta must be >= 0.0, received beta=-1.0"),
        ("--objective=fgsm_at", "unknown objective 'fgsm_at'; known objectives: none, at, at2l, tr, trades, mart"),
        ("--triplet_features=pen", "unknown triplet_features 'pen'; known: logits, embedding"),
        ("--triplet_distance=l3", "unknown triplet_distance 'l3'; known: linf, l2, l1, cosine"),
        ("--triplet_negative=semi", "unknown triplet_negative 'semi'; known: random, hardest"),
        ("--objective=none --triplet_features=embedding",
         "triplet_features='embedding' needs the triplet term, which objective='none' does not have"),
        ("--objective=trades --triplet_negative=hardest",
         "triplet_negative='hardest' needs the triplet term, which objective='trades' adds only with --lambda2 > 0"),
        ("--objective=at --beta=1", "objective='at' takes no beta, received beta=1.0"),
        ("--objective=trades --attack=fgsm", "objective 'trades' crafts x' with its own KL attack (trades_kl)"),
        ("--objective=trades --ensemble_attacks=gra", "ensemble training needs objective at, at2l or tr"),
    ],
)
def test_bad_objective_flags_are_one_line_config_errors(parse, args, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse(*args.split()).validate()
    assert "\n" not in str(info.value)


# A linear model on the pixels, registered for the run (the shipped models all have a
# penultimate layer), then the train command.
_LINEAR_MODEL_TRAIN = textwrap.dedent("""
    import keras
    from at2l_tf import cli, train
    from at2l_tf.models.registry import register

    @register("mnist_linear", "mnist", "logistic regression on the pixels")
    def mnist_linear(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        flat = keras.layers.Flatten()(inputs)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(flat), name="mnist_linear")

    cli.run(train.main, "train")
""")


def test_bad_input_on_the_command_line_exits_1_with_one_line_and_trains_nothing(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    runs = {  # Started together: each spends most of its time importing TensorFlow.
        "beta": [sys.executable, "-m", "at2l_tf.train", "--objective=trades", "--beta=-1"],
        "deprecated": [sys.executable, "-m", "at2l_tf.train", "--defense=at", "--eps=-1"],
        "removed": [sys.executable, "-m", "at2l_tf.train", "--objective=at", "--norm=l2"],
        "conflict": [sys.executable, "-m", "at2l_tf.train", "--objective=trades", "--defense=at"],
        "embedding": [sys.executable, "-c", _LINEAR_MODEL_TRAIN, "--model=mnist_linear",
                      "--triplet_features=embedding"],
    }
    procs = {
        name: subprocess.Popen([*cmd, f"--workdir={tmp_path / name}", "--export_dir="], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in runs.items()
    }
    expected = {
        "beta": "train: error: beta must be >= 0.0, received beta=-1.0",
        "deprecated": ["[at2l_tf] warning: --defense is deprecated; use --objective",
                       "train: error: eps must be >= 0.0, received eps=-1.0"],
        "removed": "train: error: --norm was removed: use --triplet_distance, received --norm=l2",
        "conflict": "train: error: --defense is a deprecated alias of --objective: give only --objective "
                    "(a later one overrides a flagfile's), received --objective=trades and --defense=at",
        "embedding": "train: error: model 'mnist_linear' has no penultimate layer for "
                     "triplet_features='embedding' (its logits layer must take features computed "
                     "by trainable layers)",
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line and not line.startswith(TF_CHATTER)]
        want = expected[name] if isinstance(expected[name], list) else [expected[name]]
        assert (proc.returncode, lines) == (1, want), name
        assert not (tmp_path / name).exists()


def _old_meaning(path):
    """What a flagfile meant before the objectives moved: `(objective, λ2 of the triplet or None)`.

    `--defense` (now `--objective`) defaulted to at2l and `--lambda2` to 0.5; only
    at2l and tr used λ2.
    """
    values = dict(re.findall(r"^--(\w+)=(.*)$", open(path).read(), flags=re.M))
    defense = values.get("objective", "at2l")
    lambda2 = float(values.get("lambda2", 0.5))
    objective = {"none": "none", "at": "at", "at2l": "at", "tr": "none"}[defense]
    return objective, lambda2 if defense in ("at2l", "tr") else None


def test_every_shipped_flagfile_keeps_its_meaning(parse):
    root = os.path.join(ROOT, "flags")
    names = sorted(
        f for f in os.listdir(root)
        if f.endswith(".flags") and not f.endswith(("_tune.flags", "_wgan.flags"))
        # Newer than the change (mnist_reference became TRADES after it: test_shipped_models).
        and not f.startswith(("mnist_trades", "mnist_mart", "cifar10_trades", "mnist_reference"))
    )
    assert len(names) >= 13
    for name in names:
        path = os.path.join(root, name)
        d = parse(f"--flagfile={path}").validate().train.describe()
        triplet = d["triplet"] and d["triplet"]["lambda2"]
        assert (d["loss"]["name"], triplet) == _old_meaning(path), name
        if d["triplet"]:
            assert (d["triplet"]["features"], d["triplet"]["distance"], d["triplet"]["negative"]) == (
                "logits", "linf", "random"
            ), name


@pytest.mark.parametrize("name, objective, beta, steps, step_size, eps", [
    ("mnist_trades.flags", "trades", 1.0, 40, 0.01, 0.3),
    ("cifar10_trades.flags", "trades", 6.0, 10, 2 / 255, 8 / 255),
    ("mnist_mart.flags", "mart", 6.0, 40, 0.01, 0.3),
    ("mnist_trades_cpu.flags", "trades", 1.0, 10, None, 0.3),
    ("mnist_mart_cpu.flags", "mart", 6.0, 10, None, 0.3),
])
def test_the_trades_and_mart_recipes(parse, name, objective, beta, steps, step_size, eps):
    path = os.path.join(ROOT, "flags", name)
    first = open(path).readline()
    assert first.startswith(f"# python -m at2l_tf.train --flagfile=flags/{name}")
    cfg = parse(f"--flagfile={path}").validate()
    assert (cfg.train.objective, cfg.train.describe()["loss"]["beta"], cfg.attack.steps) == (objective, beta, steps)
    assert cfg.attack.step_size == pytest.approx(step_size) if step_size else cfg.attack.step_size is None
    assert cfg.eps == pytest.approx(eps) and not cfg.train.uses_triplet
    text = open(path).read()
    assert ("NOT MEASURED" in text) != ("to be measured" in text)


def test_results_json_records_the_objective_and_the_triplet(tmp_path):
    from at2l_tf import experiment

    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=64, batch_size=32, validation_size=32),
        attack=config_lib.AttackConfig(steps=1),
        train=config_lib.TrainConfig(objective="trades", beta=2.0, lambda2=0.3, triplet_negative="hardest",
                                     epochs=1),
        eval=config_lib.EvalConfig(num_examples=0),
        workdir=str(tmp_path / "run"),
        export_dir=None,
    )
    experiment.run(cfg, verbose=0)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["training"] == {
        "objective": "trades",
        "loss": {"name": "trades", "attack_loss": "kl", "beta": 2.0},
        "triplet": {"features": "logits", "distance": "linf", "negative": "hardest", "lambda2": 0.3,
                    "margin": 0.5},
    }
    assert {"triplet", "ce_adv", "adv_acc"} <= set(results["history"])


def test_each_config_section_validates_its_own_fields():
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        config_lib.DataConfig(batch_size=1).validate()
    with pytest.raises(ConfigError, match="attack_steps must be >= 1"):
        config_lib.AttackConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="beta must be >= 0.0"):
        config_lib.TrainConfig(objective="mart", beta=-0.5).validate()
    with pytest.raises(ConfigError, match="unknown preprocessing 'jpeg'"):
        config_lib.PreprocessingConfig(name="jpeg").validate()
    with pytest.raises(ConfigError, match="regenerate_every must be >= 1"):
        config_lib.EnsembleConfig(attacks=("gra",), regenerate_every=0).validate()
    with pytest.raises(ConfigError, match="eval_pgd_steps must be >= 1"):
        config_lib.EvalConfig(pgd_steps=0).validate()
    for section in (config_lib.DataConfig(), config_lib.AttackConfig(), config_lib.TrainConfig(),
                    config_lib.PreprocessingConfig(), config_lib.EnsembleConfig(), config_lib.EvalConfig()):
        assert section.validate() is section
