"""The markdown of benchmarks/README.md's tables, and `--markdown_from`, which prints a
benchmark's table from its committed results JSON (tests/test_readme.py compares the two)."""

import json


def markdown_table(header, rows, align=None):
    """Markdown lines of a table: `header` cells, then `rows` (lists of cells); `align`: a
    separator cell per column (default `---`; `---:` right-aligns)."""
    align = align or ["---"] * len(header)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def markdown_only(argv, path, markdown):
    """A table benchmark's start: raises `ConfigError` on positional arguments; with `path`,
    prints `markdown(record)` of the results JSON there and returns True (the caller stops)."""
    from at2l_tf.errors import ConfigError

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if path:
        with open(path) as fh:
            print(markdown(json.load(fh)))
        return True
    return False
