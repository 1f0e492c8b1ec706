"""The README is the front door: its commands must be the ones CI runs, it stays
short, and its links resolve. The measured tables, in benchmarks/README.md, are
the committed runs: printed by each benchmark's `--markdown_from`, or their
figures compared with the JSON's."""

import json
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _bench():
    return _read("benchmarks", "README.md")


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


def test_readme_is_a_front_door_of_at_most_15000_bytes():
    # The measured tables live in benchmarks/README.md, the long tour in docs/usage.md.
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 15000


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


MARKDOWN = ("README.md", "benchmarks/README.md", "savedmodels/README.md", "docs/usage.md")


@pytest.mark.parametrize("page", MARKDOWN)
def test_every_relative_link_resolves_to_a_file_in_the_repo(page):
    text = _read(page)
    here = os.path.dirname(os.path.join(ROOT, page))
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # A web address.
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(here, path)) if path else os.path.join(ROOT, page)
        assert os.path.exists(target), f"{page}: {link}"
        if anchor:  # A heading of the page it points at.
            headings = [l for l in open(target).read().splitlines() if l.startswith("#")]
            assert anchor in {_slug(h) for h in headings}, f"{page}: {link}"


def _pct(value):
    return f"{100 * value:.1f}%"


def test_readme_headline_table_is_the_committed_runs():
    readme = _read("README.md")
    ref = json.loads(_read("benchmarks", "results", "evaluate_mnist_reference_10k.json"))
    acc = {k: v["accuracy"] for k, v in ref["attacks"].items()}
    assert ref["num_examples"] == 10000 and ref["attacks"]["autoattack"]["version"] == "standard"
    rows = {"reference": [ref["clean_accuracy"], acc["pgd"], acc["autoattack"], ref["robust_accuracy"]]}
    compared = json.loads(_read("benchmarks", "results", "compare_defenses_mnist_pgd5.json"))
    assert compared["evaluation"]["num_examples"] == 1000
    for name in ("at", "at2l"):
        r = compared["results"][name]
        rows[name] = [r["clean_accuracy"], r["pgd_accuracy"], r["autoattack_accuracy"], r["robust_accuracy"]]
    labels = {"reference": "| reference, ", "at": "| AT, ", "at2l": "| AT²L, "}
    for name, values in rows.items():
        (line,) = [l for l in readme.splitlines() if l.startswith(labels[name])]
        cells = " | ".join(_pct(v) for v in values[:-1]) + f" | **{_pct(values[-1])}** |"
        assert line.endswith(cells), (line, cells)


def _section(text, heading):
    """The lines of `text` under the line `heading`, up to the next heading."""
    lines = text.split("\n" + heading + "\n", 1)[1].splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            return lines[:i]
    return lines


def test_shipped_reference_model_table_is_the_committed_runs():
    section = _section(_bench(), "### The reference robust model, `savedmodels/mnist_reference`")
    rows = (("3 (not shipped)", "10,000", "evaluate_mnist_reference_v3_10k.json"),
            ("2", "10,000", "evaluate_mnist_reference_10k.json"), ("1", "10,000", "evaluate_mnist_reference_v1_10k.json"),
            ("1", "1,000", "evaluate_mnist_reference_v1_1k.json"))
    for version, n, name in rows:
        r = json.loads(_read("benchmarks", "results", name))
        acc = {k: _pct(v["accuracy"]) for k, v in r["attacks"].items()}
        cells = [version, n, _pct(r["clean_accuracy"]), acc["pgd"]]
        cells += [acc.get(k, "–") for k in ("apgd_ce", "apgd_t", "square", "autoattack")]
        assert "| " + " | ".join(cells) + f" | **{_pct(r['robust_accuracy'])}** |" in section, name


def test_reference_autoattack_stage_table_is_the_committed_run():
    section = _section(_bench(), "### The reference robust model, `savedmodels/mnist_reference`")
    r = json.loads(_read("benchmarks", "results", "evaluate_mnist_reference_10k.json"))
    aa = r["attacks"]["autoattack"]
    assert r["num_examples"] == 10000 and aa["version"] == "standard"
    for stage, label in (("apgd_ce", "APGD-CE"), ("apgd_t", "APGD-T"), ("square", "Square")):
        s = aa["stages"][stage]
        line = f"| {label} | {s['attacked']:,} | {s['fooled']:,} | {s['seconds'] / 60:.1f} min |"
        assert line in section, line
    assert f"| all, with PGD-40 | | | {r['seconds'] / 60:.1f} min |" in section


@pytest.mark.parametrize("name, heading", [
    ("compare_defenses_mnist_pgd5.json", "### Defences compared: none, AT (Eq. 1), AT²L (Eq. 2)"),
    ("compare_defenses_mnist_fgsm_rs.json", "### With a single-step training attack"),
])
def test_defences_compared_tables_are_the_committed_runs(name, heading, printed_table):
    section = _section(_bench(), heading)
    lines = printed_table("study.py", name, study="defenses")
    assert lines[0].startswith("| defence |") and "\n".join(lines) in "\n".join(section)
    labels = {"none": "none", "at": "AT (Eq. 1)", "at2l": "AT²L (Eq. 2, λ2 = 0.5, α = 0.5)"}
    results = json.loads(_read("benchmarks", "results", name))["results"]
    for objective, r in results.items():
        cells = [labels[objective]] + [_pct(r[f"{k}_accuracy"]) for k in ("clean", "fgsm", "pgd", "autoattack")]
        assert "| " + " | ".join(cells) + f" | **{_pct(r['robust_accuracy'])}** |" in section, objective


def _performance_rows(lines):
    """`{figure name: [value per model]}` of a performance table's lines."""
    rows = {}
    for line in lines:
        m = re.match(r"\| `(\w+)` \([^|]*\) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = [float(m.group(2)), float(m.group(3))]
    return rows


def test_performance_figures_are_the_committed_speed_run():
    result = json.loads(_read("benchmarks", "results", "speed_cpu.json"))
    assert result["quick"] is False
    rows = _performance_rows(_section(_bench(), "## 4. Performance"))
    assert set(rows) == {
        "at2l_over_at", "pgd_efficiency", "fgsm_vs_art", "pgd_vs_art", "pgd_vs_cleverhans_eager"
    }
    for name, values in rows.items():
        measured = [result["models"][m][name] for m in ("mnist_small", "madry_mnist")]
        assert values == [round(v, 2) for v in measured], name


def test_library_comparison_is_the_committed_attack_speed_run():
    result = json.loads(_read("benchmarks", "results", "speed_attacks_cpu.json"))
    assert result["quick"] is False
    rows = _performance_rows(_section(_bench(), "### Against other evaluation libraries"))
    assert set(rows) == {"apgd_vs_art", "pgd_vs_foolbox"}
    for name, values in rows.items():
        measured = [result["models"][m][name] for m in ("mnist_small", "madry_mnist")]
        assert values == [round(v, 2) for v in measured], name


@pytest.fixture
def printed_table(repo_python):
    """`printed_table(script, *result, study=None)`: the README table `benchmarks/<script>
    --markdown_from=benchmarks/results/<result>` prints (with `study`: `benchmarks/study.py
    --study=<study> --markdown_from=...`), as a list of lines."""

    def _printed(script, *result, study=None):
        run = repo_python(os.path.join("benchmarks", script), *([f"--study={study}"] if study else []),
                          f"--markdown_from={os.path.join(ROOT, 'benchmarks', 'results', *result)}")
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.strip().splitlines()

    return _printed


def test_tables_1_and_2_are_the_committed_runs(printed_table):
    # The thermometer and randomization tables are printed from the committed
    # JSONs by the benchmark itself, line for line.
    bench = _bench().splitlines()
    for study, name in (("thermometer", "table1_thermometer_mnist.json"), ("randomization", "table2_randomization_mnist.json")):
        lines = printed_table("study.py", name, study=study)
        assert len(lines) >= 5 and all(line in bench for line in lines), name


def test_ensemble_figures_table_is_the_committed_run(printed_table):
    lines = printed_table("study.py", "figures", "ensemble_figures_mnist.json", study="ensemble")
    assert len(lines) == 9 and all(line in _bench().splitlines() for line in lines)
    for name in ("fig1_whitebox", "fig2_transfer", "fig3_tr"):
        assert os.path.exists(os.path.join(ROOT, "benchmarks", "results", "figures", name + ".png"))
        assert f"](results/figures/{name}.png)" in _bench()


def test_table3_is_the_committed_run(printed_table):
    lines = printed_table("study.py", "table3_defense_gan_mnist.json", study="defense_gan")
    assert len(lines) == 14 and all(line in _bench().splitlines() for line in lines)


def test_mixed_precision_tables_are_the_committed_runs(printed_table):
    bench = _bench().splitlines()
    speed = printed_table("speed.py", "speed_precision_cpu.json")
    amx = printed_table("speed.py", "speed_precision_amx.json")  # The AMX Xeon's.
    study = printed_table("study.py", "precision_study_mnist.json", study="precision")
    assert len(speed) == len(amx) == 6 and len(study) == 5
    assert all(line in bench for line in speed + amx + study)


def test_objectives_comparison_table_is_the_committed_run(printed_table):
    lines = printed_table("study.py", "compare_objectives_mnist.json", study="objectives")
    assert len(lines) == 11 and all(line in _bench().splitlines() for line in lines)
    lines = printed_table("study.py", "compare_objectives_mnist_mart_pretrain.json", study="objectives")
    assert len(lines) == 3 and all(line.strip() in _bench() for line in lines)


def test_triplet_study_section_is_the_committed_study(printed_table):
    # Issue 23: the section opens with the study's answer, and its table is the study's,
    # both printed from the committed JSON by the study itself; the forest plot is beside it.
    lines = printed_table("study.py", "triplet_study_mnist.json", study="triplet")
    section = _section(_bench(), "### Does a triplet term help a strong adversarial training?")
    prose = [line for line in section if line and not line.startswith("*Command*")]
    assert prose[0] == lines[0]
    table = lines[2:]
    assert len(table) == 2 + 7 and all(line in section for line in table)
    state = json.loads(_read("benchmarks", "results", "triplet_study_mnist.json"))
    assert state["complete"] is True
    assert os.path.exists(os.path.join(ROOT, "benchmarks", "results", "triplet_study_mnist_forest.png"))
    assert "](results/triplet_study_mnist_forest.png)" in "\n".join(section)


RECIPE_ABLATION_HEADING = "### Which ingredients for reference v3: a recipe ablation"
RECIPE_ABLATIONS = ("recipe_ablation_mnist.json", "recipe_ablation_mnist_amx.json")  # One per CPU: a study pairs one CPU's runs.


@pytest.mark.parametrize("name", RECIPE_ABLATIONS)
def test_recipe_ablation_tables_are_the_committed_runs(printed_table, name):
    # Each CPU's tables are printed from its JSON by the study itself, line for line, and
    # the line that opens them names that JSON, its CPU, its CPU-hours and whether it is finished.
    section = _section(_bench(), RECIPE_ABLATION_HEADING)
    lines = [line for line in printed_table("study.py", name, study="recipe_ablation") if line]
    state = json.loads(_read("benchmarks", "results", name))
    variants = {run.split("/")[0] for run in state["runs"]}  # A row each, and a pair each but TRADES'.
    assert len(lines) == 2 + len(variants) + 2 + len(variants) - 1, name
    assert all(line in section for line in lines), name
    opening = [line for line in section if line.startswith("*Command*") and f"[`{name}`]" in line]
    assert len(opening) == 1, name
    assert f"--output_json=benchmarks/results/{name}" in opening[0]
    assert state["machine"]["cpu_model"] in opening[0] and f"{state['cpu_hours']:.1f} CPU-hours" in opening[0]
    assert ("*not finished*" in opening[0]) is (not state["complete"])


def test_checkpoint_curve_is_the_committed_run(printed_table):
    lines = printed_table("checkpoint_robustness.py", "checkpoint_robustness_reference_v3.json")
    section = _section(_bench(), "### Does a long schedule pay? Reference v3's checkpoints, epoch by epoch")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 12 and all(line in section for line in table)


ATTACK_PRECISION_HEADING = "### Attacks searched in bfloat16, every verdict in float32"
ATTACK_PRECISION_RUNS = ("attack_precision_equivalence_reference.json", "attack_precision_equivalence_at2l.json",
                         "attack_precision_equivalence_reference_1k.json", "attack_precision_equivalence_at2l_1k.json",
                         "attack_precision_equivalence_at2l_amx.json", "attack_precision_equivalence_reference_1k_amx.json")


def test_attack_precision_tables_are_the_committed_runs(printed_table):
    # Each equivalence run's header, table, per-example line and verdict on the rule, as
    # `attack_precision_equivalence.py --markdown_from` prints them from the committed JSON.
    section = _section(_bench(), ATTACK_PRECISION_HEADING)
    for name in ATTACK_PRECISION_RUNS:
        lines = [line for line in printed_table("attack_precision_equivalence.py", name) if line]
        assert len(lines) >= 9 and all(line in section for line in lines), name


@pytest.mark.parametrize("name", ["speed_attack_precision_cpu.json", "speed_attack_precision_amx.json"])
def test_attack_precision_speed_tables_are_the_committed_runs(name):
    # GFLOP/s and share of the peak per stage and precision, as speed.py --family=attack_precision
    # wrote them: the AMD EPYC's run and the AMX Xeon's.
    section = _section(_bench(), ATTACK_PRECISION_HEADING)
    record = json.loads(_read("benchmarks", "results", name))["attack_precision"]
    assert record["loaded"] is False
    for stage_name in ("apgd_ce", "apgd_t", "square"):
        stage = record["attacks"][stage_name]
        f32, bf16 = stage["float32"], stage["bfloat16"]
        row = (f"| {stage_name} | {f32['gflops']:.1f} ({f32['share_of_peak']:.0%}) | {bf16['gflops']:.1f} "
               f"({bf16['share_of_peak']:.0%}) | {stage['bfloat16_speedup']:.2f}× |")
        assert row in section, row
