"""The shipped reference model: loads, matches its flagfile, and is robust (a property, not a figure)."""

import json
import os

import numpy as np
import pytest
from absl import flags

from at2l_tf import attacks, data, savedmodel, train
from at2l_tf import config as config_lib

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
REFERENCE = os.path.join(ROOT, "savedmodels", "mnist_reference")
FLAGFILE = os.path.join(ROOT, "flags", "mnist_reference.flags")


@pytest.fixture(scope="module")
def reference():
    return savedmodel.load_classifier(REFERENCE)


def test_reference_is_the_flagfile_recipe(reference):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", f"--flagfile={FLAGFILE}"])
        expected = json.loads(json.dumps(train.config_from_flags().to_dict()))  # As recorded: lists.
    finally:
        flags.FLAGS.unparse_flags()
    recorded = dict(reference.metadata["config"])
    # Settings added after the export count as their defaults then.
    _fill_defaults(recorded, config_lib.ExperimentConfig().to_dict())
    # The shipped version is the one the flagfile's run exported (not a copy): the whole
    # configuration matches, export directory and final check included.
    assert recorded == expected
    assert reference.metadata["model"] == "mnist_smallcnn" and reference.metadata["objective"] == "trades"
    assert reference.path.endswith(os.path.join("mnist_reference", "2"))


def test_reference_carries_its_measured_robustness():
    # assets/robustness.json: the train command's final check, then the 10,000-image
    # AutoAttack whose JSON the READMEs' tables are checked against.
    from at2l_tf.evaluation import record

    with open(os.path.join(ROOT, "benchmarks", "results", "evaluate_mnist_reference_10k.json")) as fh:
        measured = json.load(fh)
    records = record.read_records(os.path.join(REFERENCE, "2"))
    last = records[-1]
    assert last["num_examples"] == 10000 == measured["num_examples"]
    assert last["robust_accuracy"] == measured["robust_accuracy"] >= 0.9
    assert last["attacks"]["autoattack"]["params"]["version"] == "standard"
    assert records[0]["num_examples"] == 1000  # The train command's final check.


def _fill_defaults(recorded, defaults):
    for key, value in defaults.items():
        if key not in recorded:
            recorded[key] = value
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            _fill_defaults(recorded[key], value)


def test_reference_is_accurate_and_resists_pgd(reference):
    x, y = data.load_mnist_arrays("test")
    x, y = x[:128].astype(np.float32) / 255.0, y[:128].astype(np.int64)
    predict = lambda z: np.argmax(reference.model_fn(z), axis=-1)  # noqa: E731
    assert np.mean(predict(x) == y) >= 0.95
    x_adv = attacks.pgd(reference.model_fn, x, y, eps=0.3, steps=10)
    # A clean model of this size falls to ~0% here; the reference keeps most images.
    assert np.mean(predict(np.asarray(x_adv)) == y) >= 0.85


GENERATOR = os.path.join(ROOT, "savedmodels", "mnist_generator")


def test_shipped_generator_is_the_flagfile_recipe_and_makes_mnist_images():
    import dataclasses
    import json

    from at2l_tf import train_gan
    from at2l_tf.defenses import defense_gan

    fv = train_gan.define_flags(flags.FlagValues())
    fv(["train_gan", f"--flagfile={os.path.join(ROOT, 'flags', 'mnist_wgan.flags')}"])
    expected = dataclasses.asdict(train_gan.config_from_flags(fv))
    with open(os.path.join(GENERATOR, "results.json")) as fh:
        recorded = json.load(fh)["config"]
    # Settings added after the generator was trained count as their defaults.
    defaults = dataclasses.asdict(train_gan.GANConfig())
    assert {k: recorded.get(k, defaults[k]) for k in expected} == expected
    generator = defense_gan.load_generator(GENERATOR)
    images = generator(np.random.default_rng(0).normal(size=(16, 128)).astype(np.float32)).numpy()
    assert images.shape == (16, 28, 28, 1)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Digits, not noise or a constant: mostly dark background, some bright strokes.
    assert 0.05 < float(np.mean(images > 0.5)) < 0.4
