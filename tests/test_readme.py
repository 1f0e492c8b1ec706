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
    assert test_command in _read("README.md")


def test_readme_main_command_installs_and_trains():
    readme = _read("README.md")
    assert re.search(r"pip install -q -e \. && \.venv/bin/python -m at2l_tf\.train", readme)
