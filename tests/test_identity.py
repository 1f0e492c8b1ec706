"""`at2l_tf.identity`: one "is this directory the same run?" check and its one-line message."""

import json
import os

import pytest

from at2l_tf import identity
from at2l_tf.errors import ConfigError


def test_the_first_use_records_the_identity_and_a_later_same_one_passes(tmp_path):
    run = {"train": {"epochs": 3, "norms": ("linf", "l2")}, "seed": 0}
    assert identity.check_identity(str(tmp_path / "w"), run) == "new"
    on_disk = json.loads((tmp_path / "w" / identity.IDENTITY_FILE).read_text())
    assert on_disk == {"train": {"epochs": 3, "norms": ["linf", "l2"]}, "seed": 0}
    # Read back, tuples are lists: still the same run.
    assert identity.check_identity(str(tmp_path / "w"), run) == "same"


def test_another_identity_is_one_line_listing_every_difference_and_writes_nothing(tmp_path):
    directory = tmp_path / "w"
    identity.check_identity(str(directory), {"train": {"epochs": 3, "lr": 0.1}, "seed": 0, "gone": 1})
    before = (directory / identity.IDENTITY_FILE).read_text()
    with pytest.raises(ConfigError) as info:
        identity.check_identity(str(directory), {"train": {"epochs": 5, "lr": 0.1}, "seed": 1, "new": "x"},
                                what="an evaluation")
    assert str(info.value) == (
        f"workdir {directory} holds an evaluation with other settings (gone: 1 -> None; new: None -> 'x'; "
        "seed: 0 -> 1; train.epochs: 3 -> 5); use another --workdir, or delete it to start again"
    )
    assert (directory / identity.IDENTITY_FILE).read_text() == before


def test_ignored_keys_and_defaults_of_older_records(tmp_path):
    assert identity.differences({"a": 1, "eval": {"n": 1}}, {"a": 1, "eval": {"n": 2}}, ignore=("eval",)) == []
    assert identity.differences({"evaluate": 1}, {"evaluate": 2}, ignore=("eval",)) == ["evaluate: 1 -> 2"]
    # A setting added after a run was recorded counts as its default.
    (tmp_path / identity.IDENTITY_FILE).write_text(json.dumps({"steps": 3}))
    current = {"steps": 3, "precision": "float32"}
    assert identity.check_identity(str(tmp_path), current, defaults={"precision": "float32"}) == "same"
    with pytest.raises(ConfigError, match=r"\(precision: 'float32' -> 'bfloat16'\)"):
        identity.check_identity(str(tmp_path), {**current, "precision": "bfloat16"},
                                defaults={"precision": "float32"})


def test_an_unreadable_record_is_one_line(tmp_path):
    (tmp_path / identity.IDENTITY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"^cannot read .*identity.json \(.*\); use another --workdir"):
        identity.check_identity(str(tmp_path), {"a": 1})
    assert identity.read(str(tmp_path / "absent.json")) is None


def _old_names(config):
    """`config` (an `ExperimentConfig.to_dict()`) as recorded before the rename (issue 33)."""
    train = {{"objective": "defense", "triplet_distance": "norm"}.get(k, k): v for k, v in config["train"].items()}
    return {**config, "train": train}


def test_records_of_before_the_rename_read_with_the_new_names():
    from at2l_tf import config as config_lib

    config = json.loads(json.dumps(config_lib.ExperimentConfig().to_dict()))
    old = _old_names(config)
    assert identity.renamed(old) == config and identity.renamed(config) == config  # New ones stay as they are.
    # A backup's identity (flat) and a finished run's config compare equal to today's.
    assert identity.differences(identity.flatten(old), config) == []
    assert identity.renamed({"train.defense": "at", "train.norm": "l2", "seed": 0}) == {
        "train.objective": "at", "train.triplet_distance": "l2", "seed": 0}
    # results.json: the recipe was "defense", its loss "objective".
    training = {"defense": "at2l", "objective": {"name": "at", "lambda1": 1.0}, "triplet": None}
    assert identity.renamed({"training": training})["training"] == {
        "objective": "at2l", "loss": {"name": "at", "lambda1": 1.0}, "triplet": None}
    new = {"objective": "at2l", "loss": {"name": "at"}, "triplet": None}
    assert identity.renamed({"training": new})["training"] == new
    # A search: its space, the names it tunes, its trials; the tuning objective is not the recipe.
    search = {"objective": {"metric": "val_robust_acc"}, "tuned": ["lambda1", "norm", "defense"],
              "search_space": {"norms": ["linf"], "defenses": ["at"]},
              "trials": [{"tuned": {"norm": "l2"}, "hyperparameters": {"defense": "at", "norm": "l2"}}]}
    assert identity.renamed(search) == {
        "objective": {"metric": "val_robust_acc"}, "tuned": ["lambda1", "triplet_distance", "objective"],
        "search_space": {"triplet_distances": ["linf"], "objectives": ["at"]},
        "trials": [{"tuned": {"triplet_distance": "l2"},
                    "hyperparameters": {"objective": "at", "triplet_distance": "l2"}}]}
    # An attack's norm (L-inf, L2) is not the triplet's distance.
    report = {"defense": "trades", "attacks": {"pgd": {"attack": "pgd", "norm": "linf"}}}
    assert identity.renamed(report) == {"objective": "trades", "attacks": {"pgd": {"attack": "pgd", "norm": "linf"}}}


def test_a_workdir_recorded_before_the_rename_resumes(tmp_path):
    from at2l_tf import config as config_lib
    from at2l_tf.training import backup, distribute

    config = config_lib.ExperimentConfig(workdir=str(tmp_path / "run"))
    defaults = config_lib.ExperimentConfig().to_dict()
    os.makedirs(config.workdir)
    with open(os.path.join(config.workdir, "results.json"), "w") as fh:
        json.dump({"config": _old_names(json.loads(json.dumps(config.to_dict())))}, fh)
    current = backup.identity(config.to_dict(), defaults)
    backup.open_workdir(config.workdir, distribute.Worker(), current, defaults)  # Same run: no error.
    # A backup's recorded (flat) identity with the old names is the same run too.
    old = {{"train.objective": "train.defense", "train.triplet_distance": "train.norm"}.get(k, k): v
           for k, v in current.items()}
    assert "train.defense" in old and identity.differences(old, current) == []
    other = config_lib.ExperimentConfig(train=config_lib.TrainConfig(objective="trades"), workdir=config.workdir)
    with pytest.raises(ConfigError, match=r"\(train.objective: 'at2l' -> 'trades'\)"):
        backup.open_workdir(config.workdir, distribute.Worker(), backup.identity(other.to_dict(), defaults), defaults)


def test_the_shipped_export_keeps_its_old_names_on_disk_and_loads_with_the_new():
    root = os.path.join(os.path.dirname(__file__), os.pardir, "savedmodels", "mnist_reference", "2")
    on_disk = json.loads(open(os.path.join(root, "at2l_metadata.json")).read())
    assert on_disk["defense"] == "trades" and on_disk["config"]["train"]["norm"] == "linf"  # Not rewritten.
    read = identity.renamed(on_disk)
    assert read["objective"] == "trades" and "defense" not in read
    assert (read["config"]["train"]["objective"], read["config"]["train"]["triplet_distance"]) == ("trades", "linf")
