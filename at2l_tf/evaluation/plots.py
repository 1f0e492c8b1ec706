"""Plots: robustness curves (accuracy against eps) and training curves (error
against training progress, the paper's Figures 1–3), as CSV/JSON and PNG.

Robustness curves:

`curves` is an ordered mapping `{label: [accuracy at each eps]}` with
accuracies as fractions in [0, 1], one curve per attack. The caller may add a
curve labelled `WORST_CASE` ("worst case"): the accuracy under the worst case
*per example* over all attacks, the figure to quote (benchmarks/README.md,
"How to read them"). It is not computed here, because the minimum of the per-attack
accuracies overstates it when different attacks fool different examples; the
plot only draws it thicker and in black.

Both writers are atomic (a temporary file in the target directory, then
`os.replace`), so a crash leaves either the old file or the new one, never a
truncated one. The plot uses `matplotlib.figure.Figure` directly, with no
pyplot and no global backend state, so it is safe on headless machines and
inside other programs.

Training curves (`plot_panels`, `plot_figure_json`): one or more panels side
by side, each with one line per model, `y` against `x` (e.g. test error under
FGSM against epoch). A figure is a JSON-able dict, so a benchmark writes its
numbers once and the PNG is drawn from that file:

    {"title": "...", "xlabel": "epoch", "ylabel": "test error",
     "num_examples": 1000,
     "panels": [{"title": "FGSM (eps 0.3)",
                 "series": [{"label": "Adv.T", "x": [1, 2], "y": [0.31, 0.22]}, ...]}]}

`y` values are fractions in [0, 1], drawn as percentages; series are drawn in
their list order (JSON objects would lose it when written with sorted keys).
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


def validate_figure(figure):
    """Checks a training-curves figure dict (see the module docstring); returns it.

    Raises:
        ValueError: naming the first bad field.
    """
    if not isinstance(figure, dict):
        raise ValueError(f"a figure must be a dict, received {type(figure).__name__}")
    panels = figure.get("panels")
    if not isinstance(panels, list) or not panels:
        raise ValueError(f"a figure needs a non-empty list 'panels', received {panels!r}")
    n = figure.get("num_examples")
    if n is not None and (not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1):
        raise ValueError(f"num_examples must be an integer >= 1, received num_examples={n!r}")
    for p, panel in enumerate(panels):
        series = panel.get("series") if isinstance(panel, dict) else None
        if not isinstance(series, list) or not series:
            raise ValueError(f"panels[{p}] needs a non-empty list 'series', received {series!r}")
        for s, line in enumerate(series):
            where = f"panels[{p}].series[{s}]"
            if not isinstance(line, dict) or not {"label", "x", "y"} <= set(line):
                raise ValueError(f"{where} must be a dict with 'label', 'x' and 'y', received {line!r}")
            if not isinstance(line["label"], str) or not line["label"]:
                raise ValueError(f"{where}.label must be a non-empty string, received {line['label']!r}")
            xs = [_number(f"{where}.x", i, v) for i, v in enumerate(line["x"])]
            ys = [_number(f"{where}.y", i, v) for i, v in enumerate(line["y"])]
            if not xs or len(xs) != len(ys):
                raise ValueError(
                    f"{where} needs as many y as x values (at least one), received "
                    f"{len(xs)} x and {len(ys)} y"
                )
            for i, v in enumerate(ys):
                if not 0 <= v <= 1:
                    raise ValueError(f"y values must be fractions in [0, 1], received {where}.y[{i}]={v}")
    return figure


def plot_panels(path, figure):
    """Draws a training-curves figure (see the module docstring) as a PNG.

    Args:
        path: the PNG file; its directory is created if missing.
        figure: the figure dict; `validate_figure` checks it first.

    Returns:
        `path`. Nothing is written if the figure is invalid.
    """
    validate_figure(figure)
    from matplotlib import ticker
    from matplotlib.figure import Figure

    panels = figure["panels"]
    width = max(5.2 * len(panels), 7.0)
    fig = Figure(figsize=(width, 4.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        markers = iter(_MARKERS * (len(panel["series"]) // len(_MARKERS) + 1))
        for line in panel["series"]:
            ax.plot(line["x"], [100 * v for v in line["y"]], marker=next(markers), linewidth=1.5,
                    markersize=5, label=line["label"])
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(decimals=0))
        ax.set_xlabel(figure.get("xlabel", "epoch"))
        ax.set_ylabel(figure.get("ylabel", "test error"))
        ax.grid(True, alpha=0.3)
        if panel.get("title"):
            ax.set_title(panel["title"], fontsize="medium")
        note = None
        if figure.get("num_examples"):
            note = f"n = {figure['num_examples']:,}, s.e. ≤ {50 / math.sqrt(figure['num_examples']):.1f} pts"
        ax.legend(title=note, fontsize="small", title_fontsize="small", loc="best")
    if figure.get("title"):
        import textwrap

        # About 14 characters per inch at this font size: wrap, never cut.
        fig.suptitle(textwrap.fill(figure["title"], int(width * 14)), fontsize="medium")
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path


def plot_figure_json(json_path, png_path):
    """Reads a figure dict from `json_path` and draws it to `png_path`; returns `png_path`."""
    import json

    with open(json_path) as fh:
        figure = json.load(fh)
    return plot_panels(png_path, figure)


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


def plot_forest(path, rows, *, title=None, xlabel="difference (points)", note=None, xlim=None):
    """A forest plot: one row per comparison, its estimate and interval, zero marked.

    Args:
        path: the PNG file (directory created if missing; written atomically).
        rows: ordered `[{"label": str, "estimate": float, "low": float,
            "high": float}]`, in the unit of `xlabel` (e.g. points of accuracy);
            drawn top to bottom in list order.
        title: optional title.
        xlabel: the x axis label.
        note: optional text under the axis (sample sizes, the interval's method).
        xlim: optional `(low, high)` the axis must show (default: every interval
            and zero). A row reaching beyond it (a collapsed model's −75 points
            beside differences of ±2) is cut at the edge, an arrow marking the
            cut side, and its numbers are still printed in full, "(off scale)".

    Returns:
        `path`.

    Raises:
        ValueError: no rows, a row without its four keys, a non-finite value,
            `low <= estimate <= high` violated, or an `xlim` not of two finite
            increasing values. Nothing is written then.
    """
    if not rows:
        raise ValueError("a forest plot needs at least one row, received rows=[]")
    for i, row in enumerate(rows):
        missing = {"label", "estimate", "low", "high"} - set(row)
        if missing:
            raise ValueError(f"row {i} lacks {', '.join(sorted(missing))}, received {row!r}")
        values = [row["low"], row["estimate"], row["high"]]
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
            raise ValueError(f"row {i} ({row['label']!r}) has a non-finite value: {values}")
        if not values[0] <= values[1] <= values[2]:
            raise ValueError(f"row {i} ({row['label']!r}) needs low <= estimate <= high, received {values}")
    if xlim is not None and not (len(xlim) == 2 and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in xlim)
                                 and xlim[0] < xlim[1]):
        raise ValueError(f"xlim must be two finite increasing values, received xlim={xlim!r}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 1.2 + 0.55 * len(rows)), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    if xlim is None:
        low = min(r["low"] for r in rows + [{"low": 0.0}])
        high = max(r["high"] for r in rows + [{"high": 0.0}])
    else:
        low, high = min(xlim[0], 0.0), max(xlim[1], 0.0)
    for y, row in zip(ys, rows):
        lo, est, hi = max(row["low"], low), min(max(row["estimate"], low), high), min(row["high"], high)
        off = row["low"] < low or row["high"] > high
        marker = "<" if row["estimate"] < low else ">" if row["estimate"] > high else "o"
        ax.errorbar(est, y, xerr=[[est - min(lo, est)], [max(hi, est) - est]],
                    fmt=marker, color="black", ecolor="black", capsize=0 if off else 4, markersize=6)
        ax.annotate(f"{row['estimate']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}]" + (" (off scale)" if off else ""),
                    (max(hi, est), y), xytext=(6, 0), textcoords="offset points", va="center", fontsize="small")
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [row["label"] for row in rows])
    span = max(high - low, 1.0)
    ax.set_xlim(low - 0.1 * span, high + 0.45 * span)  # Room for the labels on the right.
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(xlabel if not note else f"{xlabel}\n{note}")
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path
