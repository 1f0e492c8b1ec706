"""Progress of an evaluation: a Keras bar on a terminal, lines elsewhere, an ETA from the rates."""

import io

import pytest

from at2l_tf.evaluation.progress import Progress, choose_mode


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_lines_elsewhere_nothing_at_verbose_0():
    assert choose_mode(1, _Terminal()) == "bar"
    assert choose_mode(1, io.StringIO()) == "lines"
    assert choose_mode(2, _Terminal()) == "lines"
    assert choose_mode(0, _Terminal()) is None


def test_the_bar_counts_units_and_shows_examples_and_robust():
    stream = _Terminal()
    p = Progress("bar", total=8, num_batches=2, planned={"pgd": 8}, units=2, stream=stream)
    for b in range(2):
        p.count("pgd", 4, 1.0)
        p.unit(b, "pgd", reached=4 * (b + 1), robust=3 * (b + 1))
    p.close()
    shown = stream.getvalue().split("\r")[-1]
    assert "2/2" in shown and "examples: 8" in shown and "robust: 6" in shown


def test_the_eta_is_each_attacks_rate_times_what_it_has_left():
    stream = io.StringIO()
    p = Progress("lines", total=100, num_batches=4, planned={"fgsm": 100, "apgd": 100}, units=8,
                 stream=stream)
    p.count("fgsm", 25, 0.5)
    assert p.eta() is None  # No rate for APGD yet.
    p.count("apgd", 25, 10.0)
    assert p.eta() == pytest.approx(75 * 0.5 / 25 + 75 * 10.0 / 25)
    p.count("fgsm", 25, None)  # Restored without a time: counts as done, not in the rate.
    assert p.eta() == pytest.approx(50 * 0.5 / 25 + 75 * 10.0 / 25)
    p.unit(0, "apgd", reached=25, robust=20)
    p.stage(0, "autoattack", "apgd_t", attacked=22, robust=20)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[at2l_tf] batch 1/4 apgd: 25/100 examples, 20 still robust, ")
    assert lines[0].endswith("elapsed, ETA 31.0 s")
    assert lines[1].startswith("[at2l_tf] batch 1/4 autoattack/apgd_t: 20 of 22 attacked still robust")
