"""`train --image_dir` / `evaluate --image_dir`: a folder of class subfolders, as users run it.

The folder is made in the test in Kaggle's PetImages form: real JPEGs (and a
PNG) of varied sizes in `Cat/` and `Dog/`, a zero-byte `.jpg`, a `.jpg` of
garbage bytes, a truncated JPEG, and `Thumbs.db` files.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import data, image_folder, savedmodel
from at2l_tf.errors import ConfigError, DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_GOOD = 12  # Decodable images per class.


def _write_jpeg(path, rng, bright):
    h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    base = 200 if bright else 50
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    with open(path, "wb") as f:
        f.write(tf.io.encode_jpeg(pixels).numpy())


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """PetImages/{Cat,Dog}: 12 decodable images each, 3 bad `.jpg`s, 2 `Thumbs.db`s."""
    root = tmp_path_factory.mktemp("folder") / "PetImages"
    rng = np.random.default_rng(0)
    for label, name in enumerate(("Cat", "Dog")):
        d = root / name
        d.mkdir(parents=True)
        for i in range(N_GOOD - 1):
            _write_jpeg(d / f"{i}.jpg", rng, bright=label == 1)
        png = np.full((24, 30, 3), 60 + 140 * label, np.uint8)
        (d / "png_image.png").write_bytes(tf.io.encode_png(png).numpy())
        (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (root / "Cat" / "666.jpg").write_bytes(b"")  # Zero bytes, as PetImages' Cat/666.jpg.
    (root / "Dog" / "11702.jpg").write_bytes(os.urandom(2000))  # Not an image at all.
    whole = (root / "Cat" / "0.jpg").read_bytes()
    (root / "Dog" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return root


def _bad_names(root):
    """The planted files that the pipeline's decoder refuses (the truncated JPEG may decode)."""
    bad = {"666.jpg", "11702.jpg"}
    try:
        tf.io.decode_image(tf.io.read_file(str(root / "Dog" / "truncated.jpg")), channels=3)
    except tf.errors.InvalidArgumentError:
        bad.add("truncated.jpg")
    return bad


def _run(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", f"at2l_tf.{module}", *args],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )


def _errors(proc, command):
    """The command's own error lines (TensorFlow's C++ start-up lines aside)."""
    return [l for l in proc.stderr.splitlines() if l.startswith(f"{command}: error:")]


def test_splits_are_deterministic_disjoint_stratified_and_skip_bad_files(pets, capfd):
    image_folder.index.cache_clear()
    image_folder._bad_files.cache_clear()
    idx = image_folder.index(str(pets))
    assert idx.class_names == ("Cat", "Dog")
    assert sorted(os.path.basename(p) for p in idx.ignored) == ["Thumbs.db", "Thumbs.db"]
    seen = set()
    for split, (paths, labels) in idx.splits.items():
        assert not seen & set(paths)
        seen |= set(paths)
        assert set(labels) == {0, 1}, split  # Every split holds both classes.
    assert len(seen) == idx.num_files == 2 * N_GOOD + 3
    train_labels = list(idx.splits["train"][1])
    assert train_labels != sorted(train_labels)  # Classes interleaved, not one after the other.
    image_folder.index.cache_clear()
    again = image_folder.index(str(pets))
    for split in idx.splits:
        assert list(again.splits[split][0]) == list(idx.splits[split][0])

    bad = _bad_names(pets)
    got = {}
    for split in data.SPLITS:
        ds = data.load("image_folder", split, image_size=16, image_dir=str(pets))
        items = list(ds.as_numpy_iterator())
        assert len(items) == int(ds.cardinality())
        for x, y in items:
            assert x.shape == (16, 16, 3) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
            assert y in (0, 1)
        got[split] = len(items)
    assert sum(got.values()) == 2 * N_GOOD + 3 - len(bad)
    err = capfd.readouterr().err
    lines = [l for l in err.splitlines() if "image_dir:" in l]
    assert len(lines) == 1, err  # One line, once, for the whole folder.
    assert f"skipped {len(bad)} of {2 * N_GOOD + 3} files that do not decode as images (e.g. PetImages/" in lines[0]
    assert "ignored 2 files that are not images by name (e.g. PetImages/Cat/Thumbs.db)" in lines[0]


def test_train_evaluate_and_the_export_names_the_classes(pets, tmp_path):
    workdir, export = tmp_path / "run", tmp_path / "export"
    train = _run(
        "train", f"--image_dir={pets}", "--image_size=16", "--epochs=1", "--batch_size=4",
        "--attack_steps=1", "--eval_attacks=fgsm", "--eval_examples=2", f"--workdir={workdir}",
        f"--export_dir={export}", "--verbose=2",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    skipped = [l for l in train.stderr.splitlines() if "image_dir: skipped" in l]
    assert len(skipped) == 1 and f"skipped {len(_bad_names(pets))} of 27 files" in skipped[0]
    assert re.search(r"epoch 1: ~[0-9.e-]+ s/step, ~.+ per epoch, ~.+ for 1 epoch \(\d+ steps each",
                     train.stderr)  # The time estimate.
    results = json.loads((workdir / "results.json").read_text())
    assert results["config"]["data"]["dataset"] == "image_folder"
    assert results["test"]["num_examples"] == 2  # The whole test split: one image per class.

    clf = savedmodel.load_classifier(str(export))
    assert clf.class_names == ("Cat", "Dog") and clf.metadata["class_names"] == ["Cat", "Dog"]
    assert clf.input_shape == (16, 16, 3)
    # What a TF Serving client gets: the predicted class by name.
    serving = clf.model_fn.loaded.signatures["serving_default"]
    out = serving(images=tf.zeros((3, 16, 16, 3)))
    names = out["class_name"].numpy().tolist()
    assert len(names) == 3 and set(names) <= {b"Cat", b"Dog"}
    assert [clf.class_names[i].encode() for i in out["classes"].numpy()] == names

    report = tmp_path / "eval.json"
    evaluate = _run("evaluate", f"--model_dir={export}", "--attacks=fgsm", "--num_examples=2",
                    "--batch_size=4", f"--output_json={report}", "--workdir=")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["dataset"] == "image_folder" and result["split"] == "test"
    assert result["num_examples"] == 2
    # --image_dir given explicitly reads the same folder.
    explicit = _run("evaluate", f"--model_dir={export}", f"--image_dir={pets}", "--attacks=",
                    "--num_examples=4", "--batch_size=4", "--workdir=")
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    # Another folder with two classes of other names: label 0 would mean another class.
    other = tmp_path / "Birds"
    rng = np.random.default_rng(1)
    for name in ("Finch", "Gull"):
        (other / name).mkdir(parents=True)
        for i in range(3):
            _write_jpeg(other / name / f"{i}.jpg", rng, bright=i % 2 == 0)
    wrong = _run("evaluate", f"--model_dir={export}", f"--image_dir={other}", "--attacks=",
                 "--num_examples=2", "--workdir=")
    assert wrong.returncode == 1
    assert _errors(wrong, "evaluate") == [
        f"evaluate: error: the model at {clf.path} was trained on classes Cat, Dog; "
        f"image_dir {other} has Finch, Gull"]


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "file"])
def test_a_bad_folder_is_a_one_line_error_and_nothing_is_written(tmp_path, case):
    folder = tmp_path / "images"
    expected = {
        "missing": f"image_dir does not exist: {folder}",
        "empty": f"image_dir {folder} must hold one subfolder per class, at least two; found none",
        "one_class": f"image_dir {folder} must hold one subfolder per class, at least two; found one (Cat)",
        "file": f"image_dir is not a folder: {folder}",
    }[case]
    if case == "empty":
        folder.mkdir()
    elif case == "one_class":
        (folder / "Cat").mkdir(parents=True)
        (folder / "Cat" / "1.jpg").write_bytes(b"")
    elif case == "file":
        folder.write_bytes(b"")
    workdir = tmp_path / "run"
    proc = _run("train", f"--image_dir={folder}", f"--workdir={workdir}", "--export_dir=")
    assert proc.returncode == 1
    assert _errors(proc, "train") == [f"train: error: {expected}"] and "Traceback" not in proc.stderr
    assert not workdir.exists()
    if case == "missing":  # evaluate refuses it too, before loading the model.
        proc = _run("evaluate", f"--model_dir={tmp_path}", f"--image_dir={folder}")
        assert proc.returncode == 1
        assert _errors(proc, "evaluate") == [f"evaluate: error: {expected}"]


def test_a_class_with_too_few_images_and_a_conflicting_dataset(tmp_path, parse):
    for name, n in (("Cat", 5), ("Dog", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.jpg").write_bytes(b"")
    image_folder.index.cache_clear()
    with pytest.raises(DatasetError, match="class 'Dog' of image_dir .* has 2 image file"):
        image_folder.index(str(tmp_path))
    with pytest.raises(ConfigError, match="image_dir goes with dataset='image_folder'"):
        parse(f"--image_dir={tmp_path}", "--dataset=cifar10").validate()
    cfg = parse(f"--image_dir={tmp_path}", "--image_size=32").validate()
    assert cfg.data.dataset == "image_folder" and cfg.model_name == "cats_vs_dogs_cnn"
    assert cfg.spec.class_names == ("Cat", "Dog") and cfg.spec.image_shape == (32, 32, 3)
    assert cfg.workdir == f"runs/{tmp_path.name}_at2l"


def test_a_split_is_cached_only_when_it_fits(pets, monkeypatch):
    big = image_folder.load(str(pets), "train", 16, cache=None)
    assert "CacheDatasetV2" in _ops(big)
    monkeypatch.setattr(image_folder, "cache_budget_bytes", lambda: 100)
    small = image_folder.load(str(pets), "train", 16, cache=None)
    assert "CacheDatasetV2" not in _ops(small)


def _ops(ds):
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    return {node.op for node in graph.node}
