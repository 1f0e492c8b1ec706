r"""The house's measures: longest module, longest function, code repeated across modules.

    python benchmarks/house.py                                   # print them for the tree
    python benchmarks/house.py --output_json=benchmarks/results/house.json
    python benchmarks/house.py --rev=645014f                     # the same, for a commit

Over the Python files of `at2l_tf/`, `benchmarks/` and `tests/` (tracked by git, at
`--rev`, or the working tree without it): lines per module and per top-level part
(`at2l_tf`, `benchmarks`, `tests`); the longest modules; the longest functions
(lines from `def` to the last line of the body, methods included); and the
repeated blocks: windows of `--window` (6) consecutive code lines (stripped, blank
lines, comments and docstring-only lines dropped) that occur in more than one
module, counted once per distinct block, with an example of where.
"""

import ast
import collections
import json
import subprocess

from absl import app, flags

flags.DEFINE_string("rev", None, "A git revision to measure instead of the working tree.")
flags.DEFINE_integer("window", 6, "Lines in a repeated block.")
flags.DEFINE_integer("top", 5, "How many longest modules, functions and repeated blocks to list.")
flags.DEFINE_string("output_json", None, "Also write the measures here.")
FLAGS = flags.FLAGS
PARTS = ("at2l_tf", "benchmarks", "tests")


def sources(rev):
    """{path: text} of the tracked Python files under PARTS."""
    listing = ["git", "ls-tree", "-r", "--name-only", rev] if rev else ["git", "ls-files"]
    names = subprocess.run([*listing, "--", *PARTS], capture_output=True, text=True, check=True).stdout.split()
    if rev:
        return {name: subprocess.run(["git", "show", f"{rev}:{name}"], capture_output=True, text=True,
                                     check=True).stdout for name in names if name.endswith(".py")}
    return {name: open(name).read() for name in names if name.endswith(".py")}


def functions(path, text):
    """(lines, 'path:name') of every function in one module."""
    tree = ast.parse(text)
    return [(node.end_lineno - node.lineno + 1, f"{path}:{node.name}") for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def code_lines(text):
    """The module's lines that are code: stripped, no blanks, comments or string-only lines."""
    strings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            strings.update(range(node.lineno, node.end_lineno + 1))
    return [line.strip() for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#") and number not in strings]


def repeated_blocks(texts, window):
    """{block: sorted modules} of the `window`-line blocks found in more than one module."""
    where = collections.defaultdict(set)
    for path, text in texts.items():
        lines = code_lines(text)
        for i in range(len(lines) - window + 1):
            where["\n".join(lines[i:i + window])].add(path)
    return {block: sorted(paths) for block, paths in where.items() if len(paths) > 1}


def measure(texts, window, top):
    lines = {path: len(text.splitlines()) for path, text in texts.items()}
    funcs = sorted((f for path, text in texts.items() for f in functions(path, text)), reverse=True)
    repeated = repeated_blocks(texts, window)
    by_pair = collections.Counter(" & ".join(paths[:2]) for paths in repeated.values())
    return {
        "lines": {part: sum(n for p, n in lines.items() if p.startswith(part + "/")) for part in PARTS},
        "modules": len(lines),
        "longest_modules": [[n, p] for p, n in sorted(lines.items(), key=lambda kv: -kv[1])[:top]],
        "longest_functions": [[n, name] for n, name in funcs[:top]],
        "repeated_blocks": {"window": window, "count": len(repeated),
                            "most_shared_by": [[n, pair] for pair, n in by_pair.most_common(top)]},
    }


def main(argv):
    del argv
    result = {"rev": FLAGS.rev or "working tree", **measure(sources(FLAGS.rev), FLAGS.window, FLAGS.top)}
    print(f"{result['rev']}: {result['modules']} modules; lines " +
          ", ".join(f"{part} {n:,}" for part, n in result["lines"].items()))
    for title, rows in (("longest modules", result["longest_modules"]),
                        ("longest functions", result["longest_functions"]),
                        (f"repeated {FLAGS.window}-line blocks: {result['repeated_blocks']['count']}, most shared by",
                         result["repeated_blocks"]["most_shared_by"])):
        print(f"{title}:\n" + "\n".join(f"  {n:5}  {what}" for n, what in rows))
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    app.run(main)
