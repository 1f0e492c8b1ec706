"""The recipe ablation (benchmarks/studies/recipe_ablation.py, run by benchmarks/study.py): every
variant is the recipe with its one ingredient, as the train command parses it; and its bad input
(one line, exit 1, nothing written)."""

import functools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ablation(repo_python):
    """`study.py --study=recipe_ablation` with these arguments, run as a user runs it (`repo_python`)."""
    return functools.partial(repo_python, os.path.join("benchmarks", "study.py"), "--study=recipe_ablation",
                             timeout=900)


def test_every_variant_trains_the_recipe_with_its_one_ingredient(benchmarks_module):
    """Each variant's runs are the recipe's configuration with exactly its change, as the train
    command parses them (the driver's train -> judge -> pair -> resume path itself is run for
    real by tests/test_study_driver.py; training here would repeat it)."""
    study_runs = benchmarks_module("study_runs")
    study = benchmarks_module("studies.recipe_ablation").STUDY
    config = {v.name: study_runs.parse_config([*study.recipe, *v.flags, "--seed=0"]) for v in study.variants}
    base = config["trades"]
    assert (base.train.objective, base.model_name, base.train.ema, base.train.awp_gamma) == ("trades", "mnist_small", 0.0, 0.0)
    assert base.train.eps_warmup == 0

    def value(c, k):
        return {"model_name": c.model_name, "attack_steps": c.attack.steps}[k] if k in ("model_name", "attack_steps") \
            else getattr(c.train, k)

    changed = {
        name: {k for k in ("ema", "eps_warmup", "awp_gamma", "attack_steps", "model_name") if value(c, k) != value(base, k)}
        for name, c in config.items()
    }
    assert changed == {"trades": set(), "ema": {"ema"}, "eps_warmup": {"eps_warmup"}, "awp": {"awp_gamma"},
                       "wide_silu": {"model_name"}, "all": {"ema", "eps_warmup", "awp_gamma", "model_name"},
                       "steps20": {"attack_steps"}}
    assert (config["ema"].train.ema, config["awp"].train.awp_gamma, config["eps_warmup"].train.eps_warmup) == (
        0.995, 0.005, 1)
    assert config["wide_silu"].model_name == "mnist_wide_silu"
    assert set(study.pairs) == {("trades", v) for v in config if v != "trades"}


@pytest.mark.parametrize("arg, message", [
    ("--variants=nope", "unknown variant 'nope'; known: trades, ema, eps_warmup, awp, wide_silu, all, steps20"),
    ("--variants=ema", "the variants must include the reference 'trades' of 'ema'"),
    ("--seeds=a", "seeds must be non-negative integers, received 'a'"),
    ("--epochs=0", "epochs must be >= 1, received epochs=0"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, arg, message, ablation):
    out = tmp_path / "ablation.json"
    proc = ablation(arg, f"--output_json={out}")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not out.exists()
