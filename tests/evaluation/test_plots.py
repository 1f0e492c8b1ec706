"""Tests of the robustness-curve writers: CSV round-trip, PNG output, atomic failure."""

import csv

import pytest
from matplotlib.figure import Figure

from at2l_tf.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = [0.0, 2 / 255, 4 / 255, 8 / 255]
CURVES = {
    "pgd": [0.91, 0.7, 0.52, 0.3],
    "apgd-ce": [0.91, 0.66, 0.47, 0.25],
    plots.WORST_CASE: [0.91, 0.64, 0.45, 0.21],
}


def test_csv_round_trip(tmp_path):
    path = tmp_path / "sub" / "curves.csv"  # The directory is created.
    assert plots.write_curve_csv(path, EPS, CURVES) == path
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["eps", "pgd", "apgd-ce", "worst case"]
    assert [float(r[0]) for r in rows[1:]] == EPS
    for j, label in enumerate(CURVES, start=1):
        assert [float(r[j]) for r in rows[1:]] == CURVES[label]
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.csv"]


def test_png_is_written(tmp_path):
    path = tmp_path / "curves.png"
    out = plots.plot_curves(path, EPS, CURVES, title="MNIST, AT²L", num_examples=1000)
    assert out == path
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_png_without_worst_case_or_note(tmp_path):
    path = plots.plot_curves(tmp_path / "one.png", [0.1], {"fgsm": [0.5]})
    assert path.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    "eps, curves, match",
    [
        (EPS, {"pgd": [0.9, 0.5]}, r"curves\['pgd'\] must have one accuracy per eps \(4\)"),
        ([], {"pgd": []}, "at least one radius"),
        ([0.1, 0.1, 0.2], {"pgd": [1, 1, 1]}, "must be increasing"),
        ([0.2, 0.1], {"pgd": [1, 1]}, "must be increasing"),
        ([-0.1, 0.1], {"pgd": [1, 1]}, ">= 0"),
        ([0.1], {}, "at least one curve"),
        ([0.1], {"pgd": [45.0]}, r"curves\['pgd'\]\[0\]=45.0"),
        ([0.1], {"pgd": [float("nan")]}, "fractions in"),
        ([0.1], {"eps": [0.5]}, "'eps'"),
        ([0.1], {"pgd": ["0.5"]}, "must hold numbers"),
    ],
)
def test_bad_input_raises_and_writes_nothing(tmp_path, eps, curves, match):
    for writer, name in ((plots.write_curve_csv, "c.csv"), (plots.plot_curves, "c.png")):
        with pytest.raises(ValueError, match=match) as info:
            writer(tmp_path / name, eps, curves)
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_num_examples_raises(tmp_path):
    with pytest.raises(ValueError, match="num_examples=0"):
        plots.plot_curves(tmp_path / "c.png", EPS, CURVES, num_examples=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")

    def broken_savefig(self, f, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_curves(path, EPS, CURVES)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


FIGURE = {
    "title": "Fig. 1",
    "xlabel": "epoch",
    "num_examples": 500,
    "panels": [
        {"title": "FGSM", "series": [{"label": "Adv.T", "x": [1, 2, 3], "y": [0.9, 0.5, 0.3]},
                                     {"label": "AT²L-Gra", "x": [1, 2, 3], "y": [0.9, 0.4, 0.25]}]},
        {"title": "C&W", "series": [{"label": "Adv.T", "x": [1, 2, 3], "y": [0.7, 0.6, 0.6]}]},
    ],
}


def test_training_curves_png_is_drawn_from_a_results_file(tmp_path):
    import json

    src = tmp_path / "fig.json"
    src.write_text(json.dumps(FIGURE))
    out = plots.plot_figure_json(src, tmp_path / "figs" / "fig1.png")
    data = (tmp_path / "figs" / "fig1.png").read_bytes()
    assert out == tmp_path / "figs" / "fig1.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    from matplotlib import image

    pixels = image.imread(out)
    assert pixels.shape[1] > 1.5 * pixels.shape[0]  # Two panels side by side.


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: f.update(panels=[]), "non-empty list 'panels'"),
        (lambda f: f["panels"][0]["series"][0].update(y=[0.9, 0.5]), r"panels\[0\].series\[0\] needs as many y"),
        (lambda f: f["panels"][1]["series"][0].update(y=[0.7, 60, 0.6]), r"fractions in \[0, 1\].*y\[1\]=60"),
        (lambda f: f["panels"][0]["series"][1].pop("label"), "with 'label', 'x' and 'y'"),
        (lambda f: f.update(num_examples=0), "num_examples must be an integer >= 1"),
    ],
)
def test_bad_training_curves_are_refused_and_nothing_is_written(tmp_path, change, match):
    import copy

    figure = copy.deepcopy(FIGURE)
    change(figure)
    with pytest.raises(ValueError, match=match):
        plots.plot_panels(tmp_path / "f.png", figure)
    assert not (tmp_path / "f.png").exists()
