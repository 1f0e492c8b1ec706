"""Robustness curves: accuracy against the L-inf radius eps, as CSV and PNG.

`curves` is an ordered mapping `{label: [accuracy at each eps]}` with
accuracies as fractions in [0, 1], one curve per attack. The caller may add a
curve labelled `WORST_CASE` ("worst case"): the accuracy under the worst case
*per example* over all attacks, the figure to quote (DESIGN.md, "How we
measure"). It is not computed here, because the minimum of the per-attack
accuracies overstates it when different attacks fool different examples; the
plot only draws it thicker and in black.

Both writers are atomic (a temporary file in the target directory, then
`os.replace`), so a crash leaves either the old file or the new one, never a
truncated one. The plot uses `matplotlib.figure.Figure` directly, with no
pyplot and no global backend state, so it is safe on headless machines and
inside other programs.
"""

import csv
import io
import math
import numbers

from at2l_tf import fileio

WORST_CASE = "worst case"

_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")


def write_curve_csv(path, eps_values, curves):
    """Writes robustness curves as CSV: columns `eps,<label1>,<label2>,...`.

    Args:
        path: the CSV file; its directory is created if missing.
        eps_values: increasing radii (>= 0), one row each.
        curves: ordered `{label: [accuracy per eps]}`, fractions in [0, 1].

    Returns:
        `path`. Numbers are written with Python's shortest round-trip repr, so
        `float()` of a cell gives back the value exactly.

    Raises:
        ValueError: if `eps_values` is empty or not increasing, a curve has not
            one accuracy per eps, an accuracy lies outside [0, 1], or a label is
            empty or `"eps"`. Nothing is written then.
    """
    eps_values, curves = _validate(eps_values, curves)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["eps", *curves])
    for i, eps in enumerate(eps_values):
        writer.writerow([repr(eps), *(repr(values[i]) for values in curves.values())])
    fileio.atomic_write_text(path, buffer.getvalue())
    return path


def plot_curves(path, eps_values, curves, *, title=None, num_examples=None):
    """Plots accuracy (0-100%) against eps, one line per label, and saves a PNG.

    Args:
        path: the PNG file (written as PNG whatever its extension); its
            directory is created if missing.
        eps_values: increasing radii (>= 0).
        curves: ordered `{label: [accuracy per eps]}`, fractions in [0, 1];
            a `WORST_CASE` curve is drawn thick and black, on top.
        title: optional figure title (e.g. model, dataset and attack budget).
        num_examples: number of test images behind each point; shown in the
            legend with the largest standard error, `0.5 / sqrt(n)`.

    Returns:
        `path`.

    Raises:
        ValueError: as `write_curve_csv`, or if `num_examples` is not a
            positive integer. Nothing is written then.
    """
    eps_values, curves = _validate(eps_values, curves)
    if num_examples is not None and (
        not isinstance(num_examples, numbers.Integral) or num_examples < 1
    ):
        raise ValueError(
            f"num_examples must be an integer >= 1, received num_examples={num_examples!r}"
        )
    # Imported here: matplotlib costs about a second to import, and only
    # callers that draw should pay for it.
    from matplotlib import ticker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    markers = iter(_MARKERS * (len(curves) // len(_MARKERS) + 1))
    for label, values in curves.items():
        percent = [100 * v for v in values]
        if label == WORST_CASE:
            style = dict(marker="o", color="black", linewidth=3, markersize=6, zorder=3)
        else:
            style = dict(marker=next(markers), linewidth=1.5, markersize=5, zorder=2)
        ax.plot(eps_values, percent, label=label, **style)
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(decimals=0))
    ax.set_xlabel("eps (L∞)")
    ax.set_ylabel("accuracy")
    if len(eps_values) <= 12:
        ax.set_xticks(eps_values, [f"{e:.3g}" for e in eps_values])
    ax.grid(True, alpha=0.3)
    note = None
    if num_examples is not None:
        std_error = 50 / math.sqrt(num_examples)  # Largest at p = 0.5, in points.
        note = f"n = {num_examples:,} examples, s.e. ≤ {std_error:.1f} points"
    ax.legend(title=note, fontsize="small", title_fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path


def _validate(eps_values, curves):
    """Returns `eps_values` and `curves` as lists of floats, or raises ValueError."""
    eps_values = [_number("eps_values", i, e) for i, e in enumerate(eps_values)]
    if not eps_values:
        raise ValueError("eps_values must hold at least one radius, received []")
    if eps_values[0] < 0:
        raise ValueError(f"eps_values must be >= 0, received eps_values={eps_values}")
    if any(b <= a for a, b in zip(eps_values, eps_values[1:])):
        raise ValueError(f"eps_values must be increasing, received eps_values={eps_values}")
    if not curves:
        raise ValueError(f"curves must hold at least one curve, received curves={curves!r}")
    checked = {}
    for label, values in curves.items():
        if not isinstance(label, str) or not label or label == "eps":
            raise ValueError(
                f"curve labels must be non-empty strings other than 'eps', received {label!r}"
            )
        values = [_number(f"curves[{label!r}]", i, v) for i, v in enumerate(values)]
        if len(values) != len(eps_values):
            raise ValueError(
                f"curves[{label!r}] must have one accuracy per eps ({len(eps_values)}), "
                f"received {len(values)}: {values}"
            )
        for i, v in enumerate(values):
            if not 0 <= v <= 1:  # Also rejects NaN.
                raise ValueError(
                    f"accuracies must be fractions in [0, 1], received "
                    f"curves[{label!r}][{i}]={v}"
                )
        checked[label] = values
    return eps_values, checked


def _number(name, index, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must hold numbers, received {name}[{index}]={value!r}")
    return float(value)
