"""The markdown of benchmarks/README.md's tables, and `--markdown_from`, which prints a
benchmark's table from its committed results JSON (tests/test_readme.py compares the two)."""

import json


def markdown_table(header, rows, align=None):
    """Markdown lines of a table: `header` cells, then `rows` (lists of cells).

    `align`: a separator cell per column (default `---`; `---:` right-aligns).
    """
    align = align or ["---"] * len(header)
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def print_markdown_from(path, markdown):
    """Prints `markdown(record)` of the results JSON at `path`."""
    with open(path) as fh:
        print(markdown(json.load(fh)))


def markdown_only(argv, path, markdown):
    """A table benchmark's start: `True` when `--markdown_from=path` printed its table.

    Raises `ConfigError` on positional arguments; prints `markdown(record)` of
    the results JSON at `path` (when given), the table of benchmarks/README.md
    that the committed run makes, and the caller then stops.
    """
    from at2l_tf.errors import ConfigError

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if path:
        print_markdown_from(path, markdown)
        return True
    return False
