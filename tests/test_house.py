"""The house: what the code cites exists, and `benchmarks/house.py` measures what it says."""

import functools
import importlib.util
import pathlib
import re
import subprocess
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _house():
    spec = importlib.util.spec_from_file_location("house", ROOT / "benchmarks" / "house.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_document_the_code_cites_is_in_the_repository():
    # Upper-case document names (like README.md) cited by a tracked source
    # file must exist in the repository, at the cited path or at the root.
    files = subprocess.run(["git", "ls-files", "*.py", "*.flags", "*.md"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    missing = []
    for name in files:
        text = (ROOT / name).read_text(encoding="utf-8")
        for cited in set(re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Z_]*\.md)\b", text)):
            places = [(ROOT / cited).resolve(), (ROOT / name).parent.joinpath(cited).resolve()]
            if not any(p.is_relative_to(ROOT) and p.exists() for p in places):  # a clone has no ../
                missing.append(f"{name} cites {cited}")
    assert not missing, missing


def test_repeated_blocks_are_found_across_modules_not_within_one():
    house = _house()
    block = "\n".join(f"x{i} = f({i})" for i in range(6))
    texts = {
        "a.py": f'"""doc"""\n{block}\n# a comment\n',
        "b.py": f"import os\n\n\ndef g():\n{textwrap.indent(block, '    ')}\n",
        "c.py": f"{block}\n{block}\n",  # twice in one module: not "across modules" by itself
        "d.py": "y = 1\n" * 12,
    }
    repeated = house.repeated_blocks(texts, 6)
    assert repeated == {block: ["a.py", "b.py", "c.py"]}


def test_longest_function_counts_def_to_last_line():
    house = _house()
    text = "def short():\n    return 1\n\n\nclass K:\n    def long(self):\n        a = 1\n\n        return a\n"
    assert sorted(house.functions("m.py", text)) == [(2, "m.py:short"), (4, "m.py:long")]
    measures = house.measure({"at2l_tf/m.py": text}, window=6, top=1)
    assert measures["longest_functions"] == [[4, "at2l_tf/m.py:long"]]
    assert measures["lines"]["at2l_tf"] == 9
