"""Mixed precision: the policy follows the hardware it is given, training computes in
16 bits where asked, and everything that judges or serves a model is float32."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import config as config_lib
from at2l_tf import precision, savedmodel
from at2l_tf.errors import ConfigError
from at2l_tf.training import backup as backup_lib

EPYC_BF16 = precision.Hardware("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16"}))
SAPPHIRE_AMX = precision.Hardware("Intel Xeon Platinum 8488C", frozenset({"avx512f", "amx_bf16", "amx_tile"}))
XEON_NO_BF16 = precision.Hardware("Intel Xeon Platinum 8259CL", frozenset({"avx2", "avx512f"}))
A100 = precision.Hardware("Intel Xeon", frozenset({"avx2"}), (("NVIDIA A100", (8, 0)),))
P100 = precision.Hardware("Intel Xeon", frozenset({"avx2"}), (("Tesla P100", (6, 0)),))


@pytest.mark.parametrize(
    "hardware, policy, says",
    [
        (EPYC_BF16, "mixed_bfloat16", "avx512_bf16"),
        (SAPPHIRE_AMX, "mixed_bfloat16", "amx_bf16"),
        (XEON_NO_BF16, "float32", "no native bfloat16"),
        (A100, "mixed_float16", "compute capability 8.0 >= 7.0"),
        (P100, "float32", "no GPU of compute capability >= 7.0"),
    ],
)
def test_auto_resolves_by_the_hardware_it_is_given(hardware, policy, says):
    p = precision.resolve("auto", hardware)
    assert p.policy == policy and says in p.reason and p.warning is None


def test_explicit_choices_and_their_warnings():
    assert precision.resolve("off", EPYC_BF16).policy == "float32"
    assert precision.resolve("bfloat16", EPYC_BF16).warning is None
    slow_bf16 = precision.resolve("bfloat16", XEON_NO_BF16)
    assert slow_bf16.policy == "mixed_bfloat16" and "slower" in slow_bf16.warning
    slow_fp16 = precision.resolve("float16", EPYC_BF16)
    assert slow_fp16.policy == "mixed_float16" and "slower" in slow_fp16.warning
    assert "\n" not in slow_bf16.warning + slow_fp16.warning
    assert precision.resolve("float16", A100).warning is None
    with pytest.raises(ValueError, match="unknown mixed_precision 'half'; known: auto, off, bfloat16, float16"):
        precision.resolve("half", EPYC_BF16)


def _tiny_config(tmp_path, choice="bfloat16", **train_kw):
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=128),
        attack=config_lib.AttackConfig(name="pgd", steps=2),
        train=config_lib.TrainConfig(objective="at2l", epochs=1, mixed_precision=choice, **train_kw),
        eval=config_lib.EvalConfig(attacks=("fgsm",), num_examples=64),
        workdir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )


def test_a_bf16_classifier_gives_float32_logits_losses_and_attacks(tmp_path):
    from at2l_tf import experiment

    cfg = _tiny_config(tmp_path).validate()
    model = experiment.build_model(cfg, precision=precision.resolve("bfloat16", EPYC_BF16))
    clf = model.classifier
    policies = {layer.name: layer.dtype_policy.name for layer in clf.layers}
    assert policies["logits"] == "float32"  # The last layer in float32, as Keras recommends.
    computing = [layer for layer in clf.layers if layer.weights and layer.name != "logits"]
    assert computing and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in computing)
    assert all(w.dtype == "float32" for w in clf.weights)  # Variables stay float32.
    x = tf.random.stateless_uniform((8, 28, 28, 1), seed=(1, 2))
    y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    x_adv = model.generate_adversarial(x, y)
    assert x_adv.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 0.3 + 1e-6
    assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0
    total, out = model._compute_losses((x, y), training=True)
    for name in ("logits", "adv_logits", "hinge", "loss_local_mean"):
        assert out[name].dtype == tf.float32, name
    assert total.dtype == tf.float32
    per_example = model.objective.per_example_loss(y, out["logits"], out["adv_logits"])
    assert per_example.dtype == tf.float32


def test_the_flag_reaches_the_built_model(parse):
    from at2l_tf import experiment

    cfg = parse("--mixed_precision=bfloat16").validate()
    assert cfg.train.mixed_precision == "bfloat16"
    model = experiment.build_model(cfg)
    assert precision.policies_of(model.classifier) == {"mixed_bfloat16", "float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored after building.


def test_float16_gets_a_loss_scale_optimizer(tmp_path):
    from at2l_tf import experiment

    cfg = _tiny_config(tmp_path, "float16").validate()
    model = experiment.build_model(cfg, precision=precision.resolve("float16", A100))
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    bf16 = experiment.build_model(cfg, precision=precision.resolve("bfloat16", EPYC_BF16))
    assert not isinstance(bf16.optimizer, keras.mixed_precision.LossScaleOptimizer)


def test_to_float32_keeps_the_weights_and_computes_in_float32():
    from at2l_tf import models

    with precision.policy_scope("mixed_bfloat16"):
        mixed = models.get_model("mnist_small")
    copy = precision.to_float32(mixed)
    assert precision.policies_of(copy) == {"float32"}
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = tf.random.stateless_uniform((4, 28, 28, 1), seed=(3, 4))
    out = copy(x)
    assert out.dtype == tf.float32
    # bfloat16 has 8 bits of mantissa: the float32 copy differs from it, slightly.
    np.testing.assert_allclose(out.numpy(), mixed(x).numpy(), atol=0.05)
    fp32 = models.get_model("mnist_small")
    assert precision.to_float32(fp32) is fp32


def test_a_bf16_run_saves_serves_and_judges_in_float32(tmp_path, capfd):
    from at2l_tf import experiment

    results = experiment.run(_tiny_config(tmp_path), verbose=0)
    first = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[at2l_tf]")][0]
    assert first.startswith("[at2l_tf] precision: mixed_bfloat16 (--mixed_precision=bfloat16")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["precision"]["policy"] == "mixed_bfloat16"
    assert on_disk["config"]["train"]["mixed_precision"] == "bfloat16"
    # model.keras: every layer float32.
    saved = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert precision.policies_of(saved) == {"float32"}
    # The export: float32 variables and logits, as a float32 run's.
    loaded = tf.saved_model.load(results["export_path"])
    assert {v.dtype for v in loaded.variables} == {tf.float32}
    serving = loaded.signatures["serving_default"]
    assert serving.structured_outputs["logits"].dtype == tf.float32
    logits = serving(images=tf.zeros((2, 28, 28, 1)))["logits"]
    np.testing.assert_allclose(logits.numpy(), saved(tf.zeros((2, 28, 28, 1))).numpy(), atol=1e-5)


def test_a_mixed_keras_file_is_evaluated_in_float32(tmp_path):
    from at2l_tf import models

    with precision.policy_scope("mixed_bfloat16"):
        mixed = models.get_model("mnist_small")
    path = str(tmp_path / "mixed.keras")
    mixed.save(path)
    clf = savedmodel.load_classifier(path)
    out = clf.model_fn(tf.zeros((2, 28, 28, 1)))
    assert out.dtype == tf.float32
    export = savedmodel.export_saved_model(mixed, str(tmp_path / "export"))
    assert {v.dtype for v in tf.saved_model.load(export).variables} == {tf.float32}


def test_a_backup_of_one_policy_is_refused_under_another(tmp_path):
    from at2l_tf import experiment

    cfg = _tiny_config(tmp_path).validate()
    model = experiment.build_model(cfg, precision=precision.resolve("bfloat16", EPYC_BF16))
    b = backup_lib.Backup(str(tmp_path / "backup"))
    b.check_precision("mixed_bfloat16")
    b.save(model, epoch=0, step=2, phase="train", history={}, pretrain_history={}, resumes=[])
    again = backup_lib.Backup(str(tmp_path / "backup"))
    again.load_meta()
    again.check_precision("mixed_bfloat16")  # The same policy resumes.
    with pytest.raises(ConfigError, match="written under precision mixed_bfloat16, this run trains under float32") as info:
        again.check_precision("float32")
    assert "\n" not in str(info.value)
    # The workdir rules ignore the choice's spelling (auto may resolve to the same policy).
    assert "train.mixed_precision" not in backup_lib.identity(cfg.to_dict())


def test_an_unknown_policy_is_one_line_and_exit_1(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--mixed_precision=half", f"--workdir={tmp_path / 'w'}"],
        capture_output=True, text=True, env=env,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == ["train: error: unknown mixed_precision 'half'; known: auto, off, bfloat16, float16"]
    assert not (tmp_path / "w").exists()


def test_every_registered_classifier_ends_in_float32_logits():
    from at2l_tf import models

    for name in models.available_models():
        with precision.policy_scope("mixed_bfloat16"):
            model = models.get_model(name)
        assert model.layers[-1].dtype_policy.name == "float32", name
