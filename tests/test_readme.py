"""The README is the front door: its commands must be the ones CI runs."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [l for l in _read(".ci", "run").splitlines() if l and not l.startswith("#")]
    test_command = ci_lines[-1]
    assert "pytest tests" in test_command
    # Whole lines, so that the README cannot add or drop arguments around it.
    readme_commands = [l.strip() for l in _read("README.md").splitlines() if "pytest tests" in l]
    assert readme_commands and set(readme_commands) == {test_command}


def test_readme_main_command_installs_and_trains():
    readme = _read("README.md")
    assert re.search(r"pip install -q -e \. && \.venv/bin/python -m at2l_tf\.train", readme)


def _performance_rows(readme):
    """`{figure name: [value per model]}` from the README's Performance table."""
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    section = section.split("**Against other evaluation libraries**", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \([^|]*\) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = [float(m.group(2)), float(m.group(3))]
    return rows


def test_readme_performance_figures_are_the_committed_speed_run():
    import json

    result = json.loads(_read("benchmarks", "results", "speed_cpu.json"))
    assert result["quick"] is False
    rows = _performance_rows(_read("README.md"))
    assert set(rows) == {
        "at2l_over_at", "pgd_efficiency", "fgsm_vs_art", "pgd_vs_art", "pgd_vs_cleverhans_eager"
    }
    for name, values in rows.items():
        measured = [result["models"][m][name] for m in ("mnist_small", "madry_mnist")]
        assert values == [round(v, 2) for v in measured], name


def test_readme_library_comparison_is_the_committed_attack_speed_run():
    import json

    result = json.loads(_read("benchmarks", "results", "speed_attacks_cpu.json"))
    assert result["quick"] is False
    section = _read("README.md").split("**Against other evaluation libraries**", 1)[1]
    rows = {}
    for line in section.split("\n\n**", 1)[0].split("\n## ", 1)[0].splitlines():
        m = re.match(r"\| `(\w+)` \([^|]*\) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = [float(m.group(2)), float(m.group(3))]
    assert set(rows) == {"apgd_vs_art", "pgd_vs_foolbox"}
    for name, values in rows.items():
        measured = [result["models"][m][name] for m in ("mnist_small", "madry_mnist")]
        assert values == [round(v, 2) for v in measured], name


def _printed_table(script, *result):
    """The README table `benchmarks/<script> --markdown_from=benchmarks/results/<result>` prints."""
    import subprocess
    import sys

    path = os.path.join(ROOT, "benchmarks", "results", *result)
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), f"--markdown_from={path}"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()


def test_readme_tables_1_and_2_are_the_committed_runs():
    # The README's thermometer and randomization tables are printed from the
    # committed JSONs by the benchmark itself, line for line.
    readme = _read("README.md")
    for name in ("table1_thermometer_mnist.json", "table2_randomization_mnist.json"):
        lines = _printed_table("preprocessing_tables.py", name)
        assert len(lines) >= 4 and all(line in readme.splitlines() for line in lines), name


def test_readme_seeds_study_table_is_the_committed_run():
    lines = _printed_table("seeds_study.py", "seeds_study_mnist.json")
    assert len(lines) == 14 and all(line in _read("README.md").splitlines() for line in lines)


def test_readme_ensemble_figures_table_is_the_committed_run():
    lines = _printed_table("ensemble_figures.py", "figures", "ensemble_figures_mnist.json")
    assert len(lines) == 9 and all(line in _read("README.md").splitlines() for line in lines)
    for name in ("fig1_whitebox", "fig2_transfer", "fig3_tr"):
        assert os.path.exists(os.path.join(ROOT, "benchmarks", "results", "figures", name + ".png"))
        assert f"benchmarks/results/figures/{name}.png" in _read("README.md")


def test_readme_table3_is_the_committed_run():
    lines = _printed_table("defense_gan_table.py", "table3_defense_gan_mnist.json")
    assert len(lines) == 14 and all(line in _read("README.md").splitlines() for line in lines)
