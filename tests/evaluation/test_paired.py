"""The paired bootstrap of two objectives and its forest plot."""

import numpy as np
import pytest

from at2l_tf.evaluation import paired, plots


def _vectors(p, n=400, seeds=(0, 1, 2), shift=0):
    rng = np.random.default_rng(shift)
    return {s: rng.random(n) < p for s in seeds}


def test_encode_decode_round_trip():
    v = np.array([True, False, True, True])
    assert paired.encode(v) == "1011"
    np.testing.assert_array_equal(paired.decode("1011"), v)


def test_identical_objectives_differ_by_exactly_zero():
    a = _vectors(0.7)
    out = paired.paired_bootstrap(a, a, replicates=200)
    assert out["difference"] == 0.0 and out["low"] == 0.0 and out["high"] == 0.0
    assert out["seeds"] == [0, 1, 2] and out["num_examples"] == 400


def test_a_clear_gain_has_an_interval_above_zero_and_noise_one_around_it():
    a = _vectors(0.6, shift=1)
    better = {s: v | (np.arange(400) % 5 == 0) for s, v in a.items()}  # +~8 points on every seed.
    gain = paired.paired_bootstrap(a, better, replicates=500)
    assert gain["low"] > 0.03 and gain["difference"] == pytest.approx(np.mean([
        np.mean(better[s]) - np.mean(a[s]) for s in a]))
    noise = paired.paired_bootstrap(a, _vectors(0.6, shift=2), replicates=500)
    assert noise["low"] < 0 < noise["high"]


def test_seed_noise_widens_the_interval():
    # The same per-seed means, but one seed far off: the interval must reflect the seeds.
    a = {s: np.zeros(500, bool) for s in (0, 1, 2)}
    b_steady = {s: np.arange(500) % 20 == 0 for s in (0, 1, 2)}  # +5 points each seed.
    b_noisy = {0: np.arange(500) % 4 == 0, 1: np.zeros(500, bool), 2: np.arange(500) % 4 == 1}
    steady = paired.paired_bootstrap(a, b_steady, replicates=500)
    noisy = paired.paired_bootstrap(a, b_noisy, replicates=500)
    assert noisy["high"] - noisy["low"] > 3 * (steady["high"] - steady["low"])


def test_pairs_only_common_seeds_and_refuses_bad_input():
    a = _vectors(0.5, seeds=(0, 1))
    b = _vectors(0.5, seeds=(1, 2))
    assert paired.paired_bootstrap(a, b, replicates=50)["seeds"] == [1]
    with pytest.raises(ValueError, match="no seed in common"):
        paired.paired_bootstrap({0: a[0]}, {5: a[0]})
    with pytest.raises(ValueError, match="shapes"):
        paired.paired_bootstrap({0: np.ones(3, bool)}, {0: np.ones(4, bool)})
    with pytest.raises(ValueError, match="level must be in"):
        paired.paired_bootstrap(a, a, level=1.5)


def test_forest_plot_writes_a_png_and_refuses_bad_rows(tmp_path):
    rows = [{"label": "AT²L", "estimate": 0.4, "low": -1.2, "high": 2.0},
            {"label": "TRADES", "estimate": 3.0, "low": 1.0, "high": 5.5}]
    out = plots.plot_forest(str(tmp_path / "f" / "forest.png"), rows, title="t", note="3 seeds")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="needs low <= estimate <= high"):
        plots.plot_forest(str(tmp_path / "bad.png"), [{"label": "x", "estimate": 3, "low": 4, "high": 5}])
    with pytest.raises(ValueError, match="lacks high"):
        plots.plot_forest(str(tmp_path / "bad.png"), [{"label": "x", "estimate": 3, "low": 1}])
    with pytest.raises(ValueError, match="at least one row"):
        plots.plot_forest(str(tmp_path / "bad.png"), [])
    assert not (tmp_path / "bad.png").exists()


def test_forest_plot_cuts_an_off_scale_row_at_the_edge(tmp_path, monkeypatch):
    # A collapsed model's −75 points beside differences of ±2: the axis keeps xlim.
    from matplotlib.axes import Axes

    limits = []
    real = Axes.set_xlim
    monkeypatch.setattr(Axes, "set_xlim", lambda self, *a, **k: limits.append(a) or real(self, *a, **k))
    rows = [{"label": "AT²L", "estimate": 0.4, "low": -1.2, "high": 2.0},
            {"label": "MART", "estimate": -75.3, "low": -78.4, "high": -72.2}]
    out = plots.plot_forest(str(tmp_path / "forest.png"), rows, xlim=(-1.2, 2.0))
    assert open(out, "rb").read(4) == b"\x89PNG" and limits[-1][0] > -2
    plots.plot_forest(str(tmp_path / "all.png"), rows)
    assert limits[-1][0] < -78
    for bad in [(2.0, -1.0), (0.0, float("nan")), (1.0,)]:
        with pytest.raises(ValueError, match="xlim must be two finite increasing values"):
            plots.plot_forest(str(tmp_path / "bad.png"), rows, xlim=bad)
    assert not (tmp_path / "bad.png").exists()
