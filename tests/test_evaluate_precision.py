"""`--attack_precision`: attacks search on a bfloat16 copy, every verdict is float32.

The tests that compare numbers never compare bfloat16 numbers with float32 ones
(an AMD EPYC's and an AMX Xeon's bfloat16 differ): a copy that agrees is the
float32 model itself, a copy that disagrees is the float32 model negated, both
injected where `evaluate` makes its copy (`savedmodel.search_fns`). The real
bfloat16 copy is used only for properties that hold whatever its rounding.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from at2l_tf import config as config_lib
from at2l_tf import data, evaluate, evaluation, models, precision, savedmodel
from at2l_tf.errors import ConfigError, ModelLoadError

FAST = (
    "--dataset=mnist", "--num_examples=16", "--batch_size=8", "--pgd_steps=3", "--apgd_ce_steps=3",
    "--apgd_t_steps=3", "--apgd_t_target_classes=2", "--square_queries=10",
    "--autoattack_steps=3", "--autoattack_queries=10", "--verbose=0",
)
EVERY_ATTACK = ("fgsm", "pgd", "apgd_ce", "apgd_t", "square", "autoattack")


def parse(*args):
    fv = evaluate.define_flags(flags.FlagValues())
    fv(["evaluate", *args])
    return fv


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A briefly trained `mnist_small`: a train-style export (its metadata names the
    architecture), an export that names none, and the `.keras` file."""
    root = tmp_path_factory.mktemp("precision")
    keras.utils.set_random_seed(0)
    model = models.get_model("mnist_small")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = data.make_pipeline(data.load("mnist", "train", max_examples=30 * 64), batch_size=64)
    model.fit(train, epochs=1, verbose=0)
    model.save(root / "model.keras")
    export = savedmodel.export_saved_model(
        model, str(root / "export"), metadata={"dataset": "mnist", "model": "mnist_small"})
    bare = savedmodel.export_saved_model(model, str(root / "bare"), metadata={"dataset": "mnist"})
    return {"export": export, "bare": bare, "keras": str(root / "model.keras"), "root": root}


def _inject(monkeypatch, make):
    """Makes `evaluate`'s copy `make(classifier)` instead of a bfloat16 copy."""
    monkeypatch.setattr(savedmodel, "search_fns", lambda c, policy="mixed_bfloat16": make(c))


def _numbers(report):
    return (report["clean_accuracy"], report["robust_accuracy"],
            {k: e["accuracy"] for k, e in report["attacks"].items()})


@pytest.mark.parametrize("which", ["export", "keras"])
def test_the_flag_reaches_every_attack(exports, monkeypatch, which):
    """Each attack runs on a `SearchModel` whose search is the bfloat16 copy."""
    current, searched = {}, set()
    real = savedmodel.search_fns

    def spying(classifier, policy="mixed_bfloat16"):
        model_fn, net_fn = real(classifier, policy)
        assert precision.policies_of(model_fn.keep) >= {"mixed_bfloat16"}

        def spy(x):
            searched.add(current["label"])
            return model_fn(x)

        return spy, net_fn

    unit = evaluation.report._attack_unit

    def labelled(r, *args):
        current["label"] = r.label
        return unit(r, *args)

    monkeypatch.setattr(savedmodel, "search_fns", spying)
    monkeypatch.setattr(evaluation.report, "_attack_unit", labelled)
    report = evaluate.evaluate_from_flags(parse(
        f"--model_dir={exports[which]}", f"--attacks={','.join(EVERY_ATTACK)}",
        "--attack_precision=bfloat16", *FAST))
    assert searched == set(EVERY_ATTACK)
    assert report["attack_precision"]["search"] == "bfloat16"
    for name in EVERY_ATTACK:
        assert report["attacks"][name]["search"]["precision"] == "bfloat16", name
    assert set(report["attacks"]["autoattack"]["stages"]["apgd_ce"]) >= {"rejected", "fooled"}


def test_an_agreeing_copy_gives_the_float32_report(exports, monkeypatch):
    args = (f"--model_dir={exports['export']}", "--attacks=fgsm,pgd,apgd_ce,square,autoattack", *FAST)
    plain = evaluate.evaluate_from_flags(parse(*args))
    _inject(monkeypatch, lambda c: (c.model_fn, c.net_fn))
    paired = evaluate.evaluate_from_flags(parse(*args, "--attack_precision=bfloat16"))
    assert _numbers(paired) == _numbers(plain)
    assert all(e["search"]["rejected"] == 0 for e in paired["attacks"].values())


def test_a_lying_copy_changes_no_verdict(exports, monkeypatch):
    """The copy calls every correctly classified image misclassified (negated
    logits): were its verdicts counted, every accuracy would be 0."""
    args = (f"--model_dir={exports['export']}", "--attacks=fgsm,apgd_ce,square,autoattack", *FAST)
    plain = evaluate.evaluate_from_flags(parse(*args))
    _inject(monkeypatch, lambda c: ((lambda x: -c.model_fn(x)), None))
    lied = evaluate.evaluate_from_flags(parse(*args, "--attack_precision=bfloat16"))
    assert lied["clean_accuracy"] == plain["clean_accuracy"] > 0.5
    for name, e in lied["attacks"].items():
        assert e["accuracy"] > 0, name
    assert lied["robust_accuracy"] > 0
    # Its candidates were refused, and what it returned fools the copy, not the model.
    assert lied["attacks"]["apgd_ce"]["search"]["rejected"] > 0
    assert lied["attacks"]["square"]["search"]["rejected"] > 0
    assert lied["attacks"]["fgsm"]["search"]["fooled_search_only"] > 0
    stages = lied["attacks"]["autoattack"]["stages"]
    assert stages["apgd_ce"]["rejected"] > 0


def test_resume_refuses_a_workdir_of_the_other_precision(exports, tmp_path):
    workdir = tmp_path / "work"
    args = (f"--model_dir={exports['keras']}", "--attacks=fgsm", f"--workdir={workdir}", *FAST)
    evaluate.evaluate_from_flags(parse(*args))
    before = sorted(os.listdir(workdir))
    with pytest.raises(ConfigError, match=re.escape("attack_precision: 'float32' -> 'bfloat16'")) as e:
        evaluate.evaluate_from_flags(parse(*args, "--attack_precision=bfloat16"))
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(workdir)) == before


def test_progress_lines_and_eta_with_a_bfloat16_search(exports, capsys):
    evaluate.evaluate_from_flags(parse(
        f"--model_dir={exports['keras']}", "--attacks=apgd_ce,autoattack",
        "--attack_precision=bfloat16", *FAST[:-1], "--verbose=2"))
    err = capsys.readouterr().err
    assert "attacks search in bfloat16, verdicts float32" in err
    assert re.search(r"batch 2/2 autoattack: 16/16 examples, \d+ still robust, [0-9.]+ (s|min|h) elapsed, ETA", err)


def test_a_savedmodel_without_its_architecture_is_refused_in_one_line(exports):
    with pytest.raises(ModelLoadError, match="names no known architecture") as e:
        evaluate.evaluate_from_flags(parse(f"--model_dir={exports['bare']}", "--attacks=fgsm",
                                           "--attack_precision=bfloat16", *FAST))
    assert "\n" not in str(e.value)


def test_the_copy_has_the_same_weights(exports):
    """The bfloat16 copy of a SavedModel computes the same function, to bfloat16's rounding."""
    target = savedmodel.load_classifier(exports["export"])
    model_fn, net_fn = savedmodel.search_fns(target)
    assert net_fn is None
    x, _ = next(iter(data.make_pipeline(data.load("mnist", "test", max_examples=64), batch_size=64)))
    f32, bf16 = target.model_fn(x).numpy(), model_fn(x).numpy()
    assert np.mean(np.argmax(f32, -1) == np.argmax(bf16, -1)) >= 0.9
    assert np.max(np.abs(f32 - bf16)) <= 0.1 * np.max(np.abs(f32)) + 0.1


def test_bad_attack_precision_exits_1_with_one_line(exports, tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "at2l_tf.evaluate", f"--model_dir={exports['keras']}",
           f"--output_json={out}", "--attack_precision=float16"]
    run = subprocess.run(cmd, capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("evaluate:")]
    assert lines == ["evaluate: error: attack_precision must be one of float32, bfloat16, auto, "
                     "received attack_precision='float16'"], run.stderr[-2000:]
    assert not out.exists()


@pytest.mark.parametrize("flags_, choice, policy", [
    ({"avx512_bf16"}, "auto", "mixed_bfloat16"),  # AMD EPYC (Zen 4/5)
    ({"amx_bf16", "amx_tile"}, "auto", "mixed_bfloat16"),  # Intel Xeon with AMX
    ({"avx2"}, "auto", "float32"),
    ({"avx2"}, "bfloat16", "mixed_bfloat16"),
    ({"avx512_bf16"}, "float32", "float32"),
])
def test_attack_precision_resolves_per_cpu(flags_, choice, policy):
    hw = precision.Hardware("some CPU", frozenset(flags_))
    got = precision.resolve_attack_precision(choice, hw)
    assert got.policy == policy
    assert (got.warning is not None) == (choice == "bfloat16" and not hw.native_bf16)


def test_train_final_check_searches_in_bfloat16(tmp_path):
    from at2l_tf import experiment

    with pytest.raises(ConfigError, match="eval_attack_precision must be one of"):
        config_lib.EvalConfig(attack_precision="half").validate()
    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=128, batch_size=64, validation_size=0),
        attack=config_lib.AttackConfig(name="fgsm"),
        # Trained in float32 on every CPU (the policy pinned): only the check's search is bfloat16.
        train=config_lib.TrainConfig(objective="at", epochs=1, mixed_precision="off"),
        eval=config_lib.EvalConfig(attacks=("fgsm", "pgd"), num_examples=16, pgd_steps=2,
                                   attack_precision="bfloat16"),
        workdir=str(tmp_path / "run"),
        export_dir=None,
    )
    results = experiment.run(cfg, verbose=0)
    test = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    assert test == json.loads(json.dumps(results["test"]))
    assert test["attack_precision"]["search"] == "bfloat16"
    assert all(e["search"]["precision"] == "bfloat16" for e in test["attacks"].values())


def test_the_python_api_of_the_docstring(exports, tmp_path):
    """`evaluate(EvaluationConfig(...))`, as the module docstring shows it, equals the command."""
    ev = evaluate
    report = ev.evaluate(ev.EvaluationConfig(
        model=ev.ModelSection(model_dir=exports["export"]),
        images=ev.ImagesSection(num_examples=16, batch_size=8),
        attacks=ev.AttacksSection(names=("apgd_ce", "fgsm"), eps=0.3, params={"apgd_ce": {"steps": 3}}),
        output=ev.OutputSection(output_json=str(tmp_path / "aa.json"), verbose=0),
    ))
    assert json.loads((tmp_path / "aa.json").read_text()) == json.loads(json.dumps(report))
    assert report["attacks"]["apgd_ce"]["steps"] == 3
    command = evaluate.evaluate_from_flags(parse(
        f"--model_dir={exports['export']}", "--attacks=apgd_ce,fgsm", "--apgd_ce_steps=3",
        "--num_examples=16", "--batch_size=8", "--eps=0.3", "--verbose=0"))
    assert _numbers(command) == _numbers(report)
    with pytest.raises(ConfigError, match=re.escape("apgd_ce_steps must be >= 1, received apgd_ce_steps=0")):
        ev.evaluate(ev.EvaluationConfig(
            model=ev.ModelSection(model_dir=exports["export"]),
            attacks=ev.AttacksSection(params={"apgd_ce": {"steps": 0}})))


def _tiny_net(input_shape):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(10, name="logits")])


@pytest.mark.parametrize("kind", ["thermometer", "random_resize_pad"])
def test_adapt_pairs_each_adaptive_wrapper_with_its_float32_twin(kind):
    """BPDA, EOT and LS-PGA search on the copy's wrapper and judge on the float32
    model's; Square queries the copy and is judged on the float32 defended model."""
    from at2l_tf import defenses
    from at2l_tf.attacks.search import SearchModel

    layer = defenses.make_layer(kind, (28, 28, 1), levels=4, seed=0)
    net = _tiny_net(layer.compute_output_shape((None, 28, 28, 1))[1:])
    calls = {"float32": 0, "copy": 0}

    def net_fn(z):
        calls["float32"] += 1
        return net(z, training=False)

    def copy_net_fn(z):  # A copy that disagrees: the logits negated.
        calls["copy"] += 1
        return -net(z, training=False)

    def model_fn(x):
        return net_fn(layer(x, training=False))

    def copy_model_fn(x):
        return copy_net_fn(layer(x, training=False))

    names = ["pgd", "square"] + (["ls_pga"] if kind == "thermometer" else [])
    specs = evaluation.adaptive.adapt(
        [evaluation.AttackSpec(n, {"eps": 0.3}) for n in names], layer=layer, net_fn=net_fn,
        model_fn=model_fn, search=(copy_model_fn, copy_net_fn))
    x = tf.constant(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32"))
    by_name = {s.name: s for s in specs}
    assert all(isinstance(s.model_fn, SearchModel) for s in specs)
    assert by_name["pgd"].adaptive == ("bpda" if kind == "thermometer" else "eot(20)")
    for s in specs:
        z = layer(x) if s.name == "ls_pga" else x  # LS-PGA attacks the encoded input.
        calls.update(float32=0, copy=0)
        s.model_fn(z)
        assert calls["copy"] > 0 and calls["float32"] == 0, s.name  # The search: the copy's.
        calls.update(float32=0, copy=0)
        s.model_fn.judge(z)
        assert calls["float32"] > 0 and calls["copy"] == 0, s.name  # The verdict: float32.
        if kind == "thermometer":  # Deterministic: the twins are exact negatives.
            np.testing.assert_allclose(s.model_fn(z), -s.model_fn.judge(z), rtol=1e-5, atol=1e-5)


def test_a_thermometer_export_is_attacked_through_bpda_on_its_bfloat16_copy(tmp_path, monkeypatch):
    """The export's network is rebuilt behind its float32 thermometer layer, and the
    adaptive attacks (BPDA, LS-PGA) and Square reach the copy."""
    from at2l_tf import experiment

    keras.utils.set_random_seed(0)
    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=0),
        attack=config_lib.AttackConfig(name="ls_pga", steps=1),
        train=config_lib.TrainConfig(objective="none", epochs=1, mixed_precision="off"),
        eval=config_lib.EvalConfig(num_examples=0),
        preprocessing=config_lib.PreprocessingConfig(name="thermometer", thermometer_levels=4),
        workdir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
    )
    export = experiment.run(cfg, verbose=0)["export_path"]
    target = savedmodel.load_classifier(export)
    model_fn, net_fn = savedmodel.search_fns(target)
    assert net_fn is not None and precision.policies_of(model_fn.keep) >= {"mixed_bfloat16"}
    report = evaluate.evaluate_from_flags(parse(
        f"--model_dir={export}", "--attacks=pgd,ls_pga,square", "--attack_precision=bfloat16", *FAST))
    assert report["attacks"]["pgd"]["adaptive"] == "bpda"
    assert report["attacks"]["ls_pga"]["adaptive"] == "behind thermometer"
    for name in ("pgd", "ls_pga", "square"):
        assert report["attacks"][name]["search"]["precision"] == "bfloat16", name


def test_the_record_says_the_search_precision(exports, tmp_path):
    import shutil

    export = str(tmp_path / "export")
    shutil.copytree(exports["export"], export)
    evaluate.evaluate_from_flags(parse(f"--model_dir={export}", "--attacks=fgsm", "--record",
                                       "--attack_precision=bfloat16", *FAST))
    (record,) = evaluation.record.read_records(export)
    assert record["attack_precision"]["search"] == "bfloat16"
    assert "search" not in record["attacks"]["fgsm"]["params"]
