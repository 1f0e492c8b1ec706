"""benchmarks/README.md's "Against AutoAttack's MNIST table": our rows are the committed runs.

Each row of ours names a version of the reference (shipped, or not: version 3); its clean
and AutoAttack figures must be the evaluation JSON's (all 10,000 test images, AutoAttack
`standard`, eps 0.3), its training time and CPU the training JSON's, its parameter count
the registry's model.
The published rows must stay sorted by AutoAttack, and ours are placed among them by
value (the text claims a rank only through the table).
"""

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADING = "### Against AutoAttack's MNIST table"

# version -> (evaluation JSON, training JSON) of the row "**reference vN**".
OURS = {
    "2": ("evaluate_mnist_reference_10k.json", "train_mnist_reference.json"),
    "3": ("evaluate_mnist_reference_v3_10k.json", "train_mnist_reference_v3.json"),
}


def _rows():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert HEADING in text, f"benchmarks/README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert "AutoAttack" in header and "clean" in header
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in body]


def _ours():
    found = {}
    for cells in _rows():
        match = re.fullmatch(r"\*\*reference v(\d+)\*\*.*", cells[1])
        if cells[0] == "**ours**":
            assert match, f"a row of ours must name its version: {cells[1]!r}"
            found[match.group(1)] = cells
    return found


def test_every_row_of_ours_is_a_known_version():
    assert set(_ours()) == set(OURS)


@pytest.mark.parametrize("version", sorted(OURS))
def test_our_row_is_the_committed_evaluation_and_training(version):
    cells = _ours()[version]
    evaluation_json, training_json = OURS[version]
    evaluation = json.loads((RESULTS / evaluation_json).read_text())
    training = json.loads((RESULTS / training_json).read_text())
    autoattack = evaluation["attacks"]["autoattack"]
    assert evaluation["num_examples"] == 10000 and evaluation["eps"] == pytest.approx(0.3)
    assert autoattack["version"] == "standard"
    assert evaluation["model_dir"].endswith(f"/{version}")
    assert training["export_path"].endswith(f"/{version}")
    assert cells[2] == f"{100 * evaluation['clean_accuracy']:.2f}"
    assert cells[3] == f"{100 * autoattack['accuracy']:.2f}"
    assert f"{training['train_seconds'] / 60:.0f} min" in cells[4]
    assert training["process"]["cpu"].split(",")[0] in cells[4]
    assert f"`{training['model']}`" in cells[1]


@pytest.mark.parametrize("version", sorted(OURS))
def test_our_parameter_count_is_the_registry_model(version):
    from at2l_tf.models import registry

    cells = _ours()[version]
    training = json.loads((RESULTS / OURS[version][1]).read_text())
    assert cells[5] == f"{registry.get_model(training['model']).count_params():,}"


def test_rows_are_ranked_by_autoattack():
    values = [float(cells[3]) for cells in _rows()]
    assert values == sorted(values, reverse=True), "rows must be in order of AutoAttack accuracy"
