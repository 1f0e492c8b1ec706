"""The evaluate command and the robustness report behind it.

One tiny MNIST model (50 Adam steps on real MNIST) is trained and exported
once per module; the command runs in-process on fresh `absl.flags.FlagValues`
(the global `flags.FLAGS` also holds the train command's flags), and in two
subprocesses for the exit status of bad input.
"""

import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, data, evaluate, evaluation, models, savedmodel
from at2l_tf.errors import At2lError, ConfigError, ModelLoadError

EPS = 0.3
LINF_ATTACKS = ("fgsm", "ifgsm", "pgd", "ll", "ill", "apgd_ce", "square", "autoattack")
ALL_ATTACKS = LINF_ATTACKS + ("cw", "deepfool")
# Small budgets: the properties under test do not need strong attacks.
FAST = (
    "--num_examples=32",
    "--batch_size=32",
    "--ifgsm_steps=3",
    "--ill_steps=3",
    "--pgd_steps=5",
    "--apgd_ce_steps=5",
    "--square_queries=20",
    "--autoattack_steps=5",
    "--autoattack_queries=20",
    "--cw_steps=10",
    "--cw_binary_search_steps=2",
    "--deepfool_max_iter=5",
    "--verbose=0",
)


def parse(*args):
    """Fresh flag values of the command, parsed from `args`."""
    fv = evaluate.define_flags(flags.FlagValues())
    fv(["evaluate", *args])
    return fv


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A briefly trained SavedModel export, and an untrained `.keras` model."""
    root = tmp_path_factory.mktemp("evaluate")
    keras.utils.set_random_seed(0)
    untrained = models.get_model("mnist_small")
    untrained.save(root / "untrained.keras")
    model = models.get_model("mnist_small")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = data.make_pipeline(
        data.load("mnist", "train", max_examples=50 * 64), batch_size=64, shuffle=True
    )
    model.fit(train, epochs=1, verbose=0)
    export = root / "export"
    savedmodel.export_saved_model(  # Metadata as train wrote it before the rename: `defense`, not `objective`.
        model, str(export), metadata={"dataset": "mnist", "model": "mnist_small", "defense": "at"}
    )
    return {"target": str(export), "untrained": str(root / "untrained.keras"), "root": root}


@pytest.fixture(scope="module")
def whitebox(exports):
    """The command with every kind of attack: `(returned report, JSON file, stdout)`."""
    out = exports["root"] / "whitebox.json"
    fv = parse(
        f"--model_dir={exports['target']}", f"--output_json={out}",
        f"--attacks={','.join(ALL_ATTACKS)}", *FAST,
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        report = evaluate.evaluate_from_flags(fv)
    return report, json.loads(out.read_text()), stdout.getvalue()


def test_whitebox_report_has_the_documented_keys_and_bounds(whitebox, exports):
    report, on_disk, _ = whitebox
    assert on_disk == json.loads(json.dumps(report))
    documented = {"clean_error", "attacks", "num_examples", "model_dir", "dataset", "split"}
    assert documented <= set(on_disk)
    assert (on_disk["model_dir"], on_disk["dataset"], on_disk["split"]) == (
        exports["target"], "mnist", "test"
    )
    assert on_disk["num_examples"] == 32 and on_disk["eps"] == EPS
    assert (on_disk["model"], on_disk["objective"]) == ("mnist_small", "at") and "defense" not in on_disk
    assert list(report["attacks"]) == list(ALL_ATTACKS) and set(on_disk["attacks"]) == set(ALL_ATTACKS)
    assert 0 <= on_disk["clean_error"] <= 0.5  # 50 steps of training do learn something.
    for name, entry in on_disk["attacks"].items():
        assert 0 <= entry["error"] <= 1 and entry["source"] == "white-box", name
        assert entry["mean_l2"] >= 0 and entry["mean_linf"] >= 0, name
    for name in LINF_ATTACKS:
        entry = on_disk["attacks"][name]
        assert entry["eps"] == EPS
        assert entry["mean_linf"] <= EPS + 1e-6, name
        assert entry["error"] >= on_disk["clean_error"] - 0.1, name  # Attacks do not help.
    assert on_disk["attacks"]["pgd"]["steps"] == 5 and on_disk["attacks"]["ifgsm"]["steps"] == 3
    assert on_disk["attacks"]["ifgsm"]["step_size"] == pytest.approx(2.5 * EPS / 3)
    # Minimal-norm attacks: they fool the model with perturbations smaller than FGSM's.
    for name in ("cw", "deepfool"):
        entry = on_disk["attacks"][name]
        assert entry["error"] > on_disk["clean_error"], name
        assert 0 < entry["fooled_mean_l2"] < on_disk["attacks"]["fgsm"]["mean_l2"], name
    assert on_disk["attacks"]["cw"]["max_iterations"] == 10
    assert on_disk["attacks"]["square"]["queries"] == 20
    assert on_disk["attacks"]["autoattack"]["version"] == "standard"
    # The worst case is per example over the L-inf rows: never above any of them.
    assert on_disk["robust_accuracy_attacks"] == list(LINF_ATTACKS)
    worst = on_disk["robust_accuracy"]
    assert worst <= min(on_disk["attacks"][k]["accuracy"] for k in LINF_ATTACKS)
    assert worst <= 1 - on_disk["clean_error"]
    assert isinstance(on_disk["black_box_only_fooled"], int)
    assert isinstance(on_disk["flags"], list)
    for flag in on_disk["flags"]:
        assert set(flag) == {"check", "message"}


def test_the_table_is_printed_on_stdout(whitebox):
    report, _, stdout = whitebox
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["attack", "source", "params"]
    assert lines[1].split()[:2] == ["clean", "-"]
    rows = {line.split()[0]: line for line in lines[2:-2]}
    assert list(rows) == list(report["attacks"])  # One row per attack, in the report's order.
    assert lines[-2].startswith("worst case") and f"{report['robust_accuracy']:.2%}" in lines[-2]
    assert "eps=0.3,seed=0,steps=5" in rows["pgd"]
    assert f" {report['attacks']['pgd']['error']:.2%} " in rows["pgd"]
    assert lines[-1] == "(32 examples)"


def test_transfer_crafts_on_each_source_and_labels_it(whitebox, exports):
    untrained, target = exports["untrained"], exports["target"]
    fv = parse(
        f"--model_dir={target}", f"--source_model_dir={untrained},{target}", "--attacks=fgsm", *FAST
    )
    report = evaluate.evaluate_from_flags(fv)
    assert report["source_model_dirs"] == [untrained, target]
    entries = report["attacks"]
    assert set(entries) == {f"fgsm@{untrained}", f"fgsm@{target}"}
    assert entries[f"fgsm@{untrained}"]["source"] == untrained
    # Crafted on a copy of the target, FGSM is the white-box attack...
    whitebox_error = whitebox[0]["attacks"]["fgsm"]["error"]
    assert entries[f"fgsm@{target}"]["error"] == whitebox_error
    # ...and from an untrained model it transfers worse than that.
    assert entries[f"fgsm@{untrained}"]["error"] < whitebox_error
    for entry in entries.values():
        assert entry["mean_linf"] <= EPS + 1e-6


def test_eps_sweep_writes_a_csv_and_a_png_of_accuracy_against_eps(exports, tmp_path):
    out = tmp_path / "sweep.json"
    fv = parse(
        f"--model_dir={exports['target']}", f"--output_json={out}", "--attacks=fgsm,pgd",
        "--eps_sweep=0,0.1,0.3", *FAST,
    )
    report = evaluate.evaluate_from_flags(fv)
    sweep = report["eps_sweep"]
    assert sweep["csv"] == str(tmp_path / "sweep_curve.csv")
    assert sweep["png"] == str(tmp_path / "sweep_curve.png")
    assert (tmp_path / "sweep_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "sweep_curve.csv").read_text().splitlines()
    assert lines[0] == "eps,fgsm,pgd,worst case" and len(lines) == 4
    clean = 1 - report["clean_error"]
    for label, accs in sweep["curves"].items():
        assert accs[0] == pytest.approx(clean), label  # No perturbation at eps 0.
        assert accs[2] <= accs[0], label
    worst = sweep["curves"]["worst case"]
    for i in range(3):
        assert worst[i] <= min(sweep["curves"]["fgsm"][i], sweep["curves"]["pgd"][i])
    # At the report's own eps (0.3), the sweep's PGD is the report's PGD.
    assert sweep["curves"]["pgd"][2] == report["attacks"]["pgd"]["accuracy"]


def test_default_attacks_end_with_autoattack():
    fv = parse("--model_dir=x")
    assert fv.attacks == ["fgsm", "pgd", "autoattack"]
    assert fv.autoattack_version is None  # The function's default, "standard".
    assert attacks.get_entry("autoattack").default("version") == "standard"


def test_flags_map_onto_attack_parameters():
    fv = parse(
        "--model_dir=x",
        "--attacks=fgsm,ifgsm,pgd,cw,deepfool,apgd_t,square,autoattack",
        "--ifgsm_steps=4",
        "--pgd_step_size=0.02",
        "--pgd_restarts=3",
        "--cw_steps=7",
        "--deepfool_overshoot=0.1",
        "--apgd_t_target_classes=3",
        "--square_queries=99",
        "--autoattack_version=fast",
        "--seed=5",
    )
    specs = {s.name: s.params for s in evaluate.attack_specs(evaluate.config_from_flags(fv).attacks, eps=0.2)}
    assert specs["fgsm"] == {"eps": 0.2}
    assert specs["ifgsm"] == {"eps": 0.2, "steps": 4, "step_size": pytest.approx(0.125)}
    assert specs["pgd"] == {"eps": 0.2, "seed": 5, "steps": 40, "step_size": 0.02, "restarts": 3}
    assert specs["apgd_t"] == {"eps": 0.2, "seed": 5, "steps": 100, "restarts": 1,
                               "target_classes": 3}
    assert specs["square"] == {"eps": 0.2, "seed": 5, "queries": 99, "p_init": 0.8}
    assert specs["autoattack"] == {"eps": 0.2, "seed": 5, "version": "fast", "steps": 100,
                                   "queries": 5000}
    assert specs["cw"]["max_iterations"] == 7 and specs["deepfool"]["overshoot"] == 0.1
    # Unset flags are None, resolved to the attacks' own defaults.
    for name, flag, param in [
        ("cw", "cw_binary_search_steps", "binary_search_steps"),
        ("cw", "cw_learning_rate", "learning_rate"),
        ("deepfool", "deepfool_max_iter", "max_iter"),
    ]:
        default = inspect.signature(attacks.get_attack(name)).parameters[param].default
        assert fv[flag].value is None and specs[name][param] == default


@pytest.mark.parametrize(
    "args, error, match",
    [
        (["--attacks=fgsm,bogus"], ConfigError, "unknown attack 'bogus'"),
        (["--attacks=pgd,pgd"], ConfigError, "attack 'pgd' is listed twice"),
        (["--eps=-0.1"], ConfigError, "eps must be >= 0.0, received eps=-0.1"),
        (["--eps=1.5"], ConfigError, "eps must be <= 1 for images in .0, 1., received eps=1.5"),
        (["--square_queries=0"], ConfigError, "square_queries must be >= 1, received square_queries=0"),
        (["--autoattack_version=plus"], ConfigError,
         "autoattack_version must be one of standard, fast, received autoattack_version='plus'"),
        (["--eps_sweep=0,0.3,0.2"], ConfigError, "eps_sweep must increase"),
        (["--eps_sweep=0,2"], ConfigError, "eps_sweep must be <= 1"),
        (["--num_examples=0"], ConfigError, "num_examples must be >= 1, received num_examples=0"),
        (["--split=dev"], ConfigError, "unknown split 'dev'"),
        (["--model_dir=/no/such/model"], FileNotFoundError, "model path does not exist"),
        (["--source_model_dir=/no/such/src"], FileNotFoundError, "/no/such/src"),
        (["--dataset=cifar10"], ConfigError, r"wrong shape: .*\(28, 28, 1\).*\(32, 32, 3\)"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(exports, tmp_path, args, error, match):
    out = tmp_path / "report.json"
    fv = parse(f"--model_dir={exports['target']}", f"--output_json={out}", *FAST, *args)
    with pytest.raises(error, match=match) as info:
        evaluate.evaluate_from_flags(fv)
    assert isinstance(info.value, (At2lError, FileNotFoundError))  # What `cli.run` reports.
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_a_keras_file_needs_the_dataset_flag(exports):
    fv = parse(f"--model_dir={exports['untrained']}", "--attacks=", *FAST)
    with pytest.raises(ConfigError, match="--dataset is required"):
        evaluate.evaluate_from_flags(fv)
    fv = parse(f"--model_dir={exports['untrained']}", "--attacks=", "--dataset=mnist", *FAST)
    report = evaluate.evaluate_from_flags(fv)
    assert report["attacks"] == {} and 0.5 < report["clean_error"] <= 1  # Untrained: chance.


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attacks=fgsm,bogus"], "evaluate: error: unknown attack 'bogus'; known attacks: "),
        (["--autoattack_version=plus"], "evaluate: error: autoattack_version must be one of "),
        (["--square_queries=0"], "evaluate: error: square_queries must be >= 1"),
        (["--dataset=cifar10"], "evaluate: error: images of the wrong shape: "),
    ],
)
def test_bad_input_exits_1_with_one_line(exports, tmp_path, args, message):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "at2l_tf.evaluate", f"--model_dir={exports['target']}"]
    cmd += [f"--output_json={out}", *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 1
    # TensorFlow's C++ start-up lines may precede it; the command's own output is one line.
    errors = [line for line in run.stderr.splitlines() if line.startswith("evaluate:")]
    assert len(errors) == 1 and errors[0].startswith(message), run.stderr[-2000:]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not out.exists()


# ------------------------------------------------------------- the library


def _always_class_0(x):
    """Logits favouring class 0 whatever the image; zero input gradient."""
    return 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None] + tf.constant([[5.0, 0.0, 0.0, 0.0]])


def _labelled(labels, batch_size=3):
    labels = np.asarray(labels, dtype=np.int64)
    images = np.random.default_rng(0).uniform(size=(len(labels), 4, 4, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def test_report_of_a_model_that_always_says_0(capsys):
    labels = [0, 1, 0, 2, 3, 0, 0, 1]  # 4 of 8 are not 0.
    specs = [
        evaluation.AttackSpec("fgsm", {"eps": 0.1}),
        evaluation.AttackSpec("pgd", {"eps": 0.1, "steps": 2}),
    ]
    report = evaluation.robustness_report(_always_class_0, _labelled(labels), specs, verbose=1)
    assert report["num_examples"] == 8
    assert report["clean_error"] == 0.5 and report["clean_accuracy"] == 0.5
    fgsm = report["attacks"]["fgsm"]
    # No gradient: FGSM leaves x as it is; predictions (all 0) do not move.
    assert fgsm["error"] == 0.5 and fgsm["mean_linf"] == 0 and fgsm["fooled"] == 0
    assert fgsm["fooled_mean_l2"] is None and fgsm["eps"] == 0.1
    # PGD's random start moves x, but nothing moves the predictions.
    assert report["attacks"]["pgd"]["error"] == 0.5
    assert 0 < report["attacks"]["pgd"]["mean_linf"] <= 0.1 + 1e-6
    captured = capsys.readouterr()
    assert captured.out == ""  # Progress on stderr only; not a terminal: one line per unit.
    lines = captured.err.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"[at2l_tf] batch {b}/3 {a}" for b in (1, 2, 3) for a in ("fgsm", "pgd")
    ]
    assert lines[0].endswith("ETA ?")  # PGD has not run yet: no rate for it.
    assert re.fullmatch(
        r"\[at2l_tf\] batch 3/3 pgd: 8/8 examples, 4 still robust, [0-9.]+ (s|min|h) elapsed, ETA 0.0 s",
        lines[-1],
    )
    assert " 3/8 examples, 2 still robust" in lines[1]  # The first batch: labels 0, 1, 0.
    evaluation.robustness_report(_always_class_0, _labelled(labels), specs, verbose=0)
    assert capsys.readouterr() == ("", "")  # verbose=0: silent.
    table = evaluation.format_report(report)
    assert "50.00%" in table and table.splitlines()[-1] == "(8 examples)"


def test_report_stops_after_num_examples():
    report = evaluation.robustness_report(
        _always_class_0, _labelled([1, 0, 0, 0, 0, 0, 0]), [], num_examples=4, verbose=0
    )
    assert report["num_examples"] == 4 and report["clean_error"] == 0.25


def test_duplicate_labels_are_refused():
    specs = [evaluation.AttackSpec("fgsm", {"eps": 0.1})] * 2
    with pytest.raises(ValueError, match="two attacks have the label 'fgsm'"):
        evaluation.robustness_report(_always_class_0, _labelled([0]), specs, verbose=0)


def _moves_down(parity):
    """A stand-in attack: moves the examples of one index parity down by eps."""

    def attack(model_fn, x, y=None, *, eps):
        del model_fn, y
        mask = tf.cast(tf.range(tf.shape(x)[0]) % 2 == parity, x.dtype)[:, None, None, None]
        return x - eps * mask

    return attack


def _threshold_model(x):
    """Class 1 when the mean pixel is above 0.5, else class 0 (4 logits)."""
    m = tf.reduce_mean(x, axis=[1, 2, 3])[:, None]
    return tf.concat([0.5 - m, m - 0.5, -1.0 + 0 * m, -1.0 + 0 * m], axis=1) * 10.0


def test_robust_accuracy_is_the_per_example_worst_case(monkeypatch):
    from at2l_tf.attacks import registry

    # Two stand-in attacks that fool disjoint halves of the examples.
    for name, parity, black_box in (("odd_down", 1, False), ("even_down", 0, True)):
        entry = registry.AttackEntry(name, _moves_down(parity), "linf", "test", black_box=black_box)
        monkeypatch.setitem(registry._REGISTRY, name, entry)
    images = np.full((8, 4, 4, 1), 0.55, np.float32)  # Mean 0.55: class 1; 0.1 down flips it.
    labels = np.ones(8, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    specs = [
        evaluation.AttackSpec("odd_down", {"eps": 0.1}),
        evaluation.AttackSpec("even_down", {"eps": 0.1}),
        evaluation.AttackSpec("cw", {"max_iterations": 1, "binary_search_steps": 1}),
    ]
    report = evaluation.robustness_report(_threshold_model, ds, specs, verbose=0, per_example=True)
    assert report["clean_accuracy"] == 1.0
    assert report["attacks"]["odd_down"]["accuracy"] == 0.5
    assert report["attacks"]["even_down"]["accuracy"] == 0.5
    # Per example nothing survives both, although each row says 50%.
    assert report["robust_accuracy"] == 0.0
    assert report["robust_accuracy_attacks"] == ["odd_down", "even_down"]  # Not the L2 C&W.
    per = report["per_example"]
    assert per["odd_down"] == [True, False] * 4 and per["even_down"] == [False, True] * 4
    # The even examples survived the white-box attack and fell to the black-box one.
    assert report["black_box_only_fooled"] == 4
    assert "0.00%" in evaluation.format_report(report).splitlines()[-2]

    report = evaluation.robustness_report(_threshold_model, ds, specs[:1], verbose=0)
    assert report["robust_accuracy"] == 0.5 and report["black_box_only_fooled"] is None

    # A composite attack (AutoAttack runs Square itself) is on neither side of the
    # black-box comparison, even when it is as strong as the black-box attack.
    entry = registry.AttackEntry("both", _moves_down(0), "linf", "test", composite=True)
    monkeypatch.setitem(registry._REGISTRY, "both", entry)
    specs_c = specs[:2] + [evaluation.AttackSpec("both", {"eps": 0.1})]
    report = evaluation.robustness_report(_threshold_model, ds, specs_c, verbose=0)
    assert report["black_box_only_fooled"] == 4 and report["robust_accuracy"] == 0.0
    report = evaluation.robustness_report(_threshold_model, ds, specs[2:], verbose=0)
    assert report["robust_accuracy"] is None  # No L-inf attack: no robust figure.


def _unreadable_models(exports, root):
    """A truncated `.keras`, a zip that is no Keras model, and a damaged SavedModel."""
    good = open(exports["untrained"], "rb").read()
    (root / "truncated.keras").write_bytes(good[: len(good) // 2])
    with zipfile.ZipFile(root / "foreign.keras", "w") as z:
        z.writestr("readme.txt", "not a model")
    (root / "damaged" / "1").mkdir(parents=True)
    (root / "damaged" / "1" / "saved_model.pb").write_bytes(b"\x00garbage")
    return {
        "truncated.keras": "not a .keras archive",
        "foreign.keras": "as a Keras model",
        "damaged": "cannot read the SavedModel in",
    }


def test_unreadable_model_files_are_one_line_errors(exports, tmp_path):
    out = tmp_path / "report.json"
    for name, match in _unreadable_models(exports, tmp_path).items():
        path = tmp_path / name
        for flag in ("--model_dir", "--source_model_dir"):
            target = path if flag == "--model_dir" else exports["target"]
            args = [f"--model_dir={target}", f"--output_json={out}", "--dataset=mnist", *FAST]
            if flag == "--source_model_dir":
                args.append(f"--source_model_dir={path}")
            with pytest.raises(ModelLoadError, match=match) as info:
                evaluate.evaluate_from_flags(parse(*args))
            assert str(path) in str(info.value) and "\n" not in str(info.value), name
            assert not out.exists()


def test_a_corrupt_keras_file_exits_1_with_one_line(exports, tmp_path):
    _unreadable_models(exports, tmp_path)
    bad = tmp_path / "truncated.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    runs = {
        "evaluate": [f"--model_dir={bad}", "--dataset=mnist", f"--output_json={tmp_path / 'r.json'}"],
        "export": [f"--model_path={bad}", f"--export_dir={tmp_path / 'serving'}"],
    }
    for command, args in runs.items():
        run = subprocess.run(
            [sys.executable, "-m", f"at2l_tf.{command}", *args], capture_output=True, text=True, env=env
        )
        assert run.returncode == 1, command
        errors = [line for line in run.stderr.splitlines() if line.startswith(f"{command}:")]
        assert errors == [
            f"{command}: error: cannot read {bad}: not a .keras archive (corrupt or truncated?)"
        ], run.stderr[-2000:]
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "serving").exists()
