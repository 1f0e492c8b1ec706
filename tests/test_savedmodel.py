import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import models, savedmodel


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return models.get_model("mnist_small")


def test_export_versions_and_serving_signature(classifier, tmp_path):
    root = tmp_path / "serving"
    first = savedmodel.export_saved_model(classifier, str(root), metadata={"dataset": "mnist"})
    second = savedmodel.export_saved_model(classifier, str(root))
    assert first.endswith(os.sep + "1") and second.endswith(os.sep + "2")
    assert sorted(os.listdir(root)) == ["1", "2"]  # No temporary directories left.
    with pytest.raises(FileExistsError):
        savedmodel.export_saved_model(classifier, str(root), version=2)
    meta = json.loads((root / "1" / savedmodel.METADATA_FILE).read_text())
    assert meta == {
        "dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10,
        "preprocessing": {"name": "none"}, "serving_input_check": True,
    }

    loaded = savedmodel.load_classifier(str(root))  # The newest version.
    assert loaded.path == second and loaded.input_shape == (28, 28, 1) and loaded.num_classes == 10
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(loaded.model_fn(x), classifier(x), rtol=1e-5, atol=1e-5)


def test_export_loads_in_a_fresh_process_and_answers_saved_model_cli(classifier, tmp_path):
    path = savedmodel.export_saved_model(classifier, str(tmp_path / "m"))
    code = (
        "import numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({path!r})\n"
        "out = m.signatures['serving_default'](images=tf.zeros((3, 28, 28, 1)))\n"
        "p = out['probabilities'].numpy()\n"
        "assert p.shape == (3, 10) and np.allclose(p.sum(1), 1, atol=1e-5)\n"
        "assert out['classes'].shape == (3,) and out['classes'].dtype == tf.int64\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok")
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    show = subprocess.run([cli, "show", "--all", "--dir", path], capture_output=True, text=True, env=env)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "signature_def['serving_default']" in show.stdout
    for name in ("images", "probabilities", "classes"):
        assert f"['{name}']" in show.stdout


def test_interrupted_export_leaves_no_version(classifier, tmp_path, monkeypatch):
    root = tmp_path / "serving"
    seen = []

    def crash(obj, export_dir, *args, **kwargs):
        # What the writer is writing into, while it writes: a hidden temporary
        # directory beside the versions, with no `root/1` yet.
        seen.append((os.path.dirname(export_dir), os.path.basename(export_dir), os.listdir(root)))
        # Half-write, then die, as a killed process would.
        os.makedirs(export_dir, exist_ok=True)
        open(os.path.join(export_dir, "saved_model.pb"), "wb").close()
        raise KeyboardInterrupt("interrupted while writing")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        savedmodel.export_saved_model(classifier, str(root))
    ((parent, name, listing),) = seen
    assert parent == str(root) and name.startswith(".") and listing == [name]
    assert os.listdir(root) == []


def test_dropout_model_loads_in_inference_mode(tmp_path):
    # Attacks and reports need deterministic logits: dropout off when loaded.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dropout(0.5), keras.layers.Dense(10)]
    )
    path = str(tmp_path / "dropout.keras")
    model.save(path)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    expected = model(x, training=False)
    for loaded in (savedmodel.load_classifier(path), _exported(model, tmp_path / "serving")):
        np.testing.assert_allclose(loaded.model_fn(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loaded.model_fn(x), loaded.model_fn(x), rtol=0, atol=0)


def _exported(model, root):
    savedmodel.export_saved_model(model, str(root))
    return savedmodel.load_classifier(str(root))


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        savedmodel.load_classifier(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        savedmodel.load_classifier(str(tmp_path / "empty"))


def test_keras_file_loads_as_classifier(classifier, tmp_path):
    path = str(tmp_path / "model.keras")
    classifier.save(path)
    loaded = savedmodel.load_classifier(path)
    x = np.zeros((2, 28, 28, 1), "float32")
    np.testing.assert_allclose(loaded.model_fn(x), classifier(x), rtol=1e-5, atol=1e-6)


def test_the_serving_signature_refuses_nan_inf_and_values_outside_0_1(classifier, tmp_path):
    # TF Serving turns the failed assertion into INVALID_ARGUMENT (HTTP 400).
    serving = tf.saved_model.load(
        savedmodel.export_saved_model(classifier, str(tmp_path / "checked"))
    ).signatures["serving_default"]
    rng = np.random.default_rng(0)
    for ok in (np.zeros, np.ones, lambda s: rng.uniform(size=s)):
        out = serving(images=tf.constant(ok((2, 28, 28, 1)), tf.float32))
        assert out["probabilities"].shape == (2, 10)
    for value, match in [
        (np.nan, "images must be finite"),
        (np.inf, "images must be finite"),
        (1.5, r"images must be in \[0, 1\]"),
        (-0.01, r"images must be in \[0, 1\]"),
    ]:
        images = rng.uniform(size=(2, 28, 28, 1)).astype(np.float32)
        images[1, 3, 4, 0] = value
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            serving(images=tf.constant(images))
    # Without the check (clients that clip upstream), 1.5 is answered.
    unchecked = savedmodel.load_classifier(
        savedmodel.export_saved_model(classifier, str(tmp_path / "unchecked"), input_check=False)
    )
    assert unchecked.metadata["serving_input_check"] is False
    assert unchecked.model_fn(np.full((1, 28, 28, 1), 1.5, np.float32)).shape == (1, 10)
