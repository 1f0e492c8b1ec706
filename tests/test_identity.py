"""`at2l_tf.identity`: one "is this directory the same run?" check and its one-line message."""

import json

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
