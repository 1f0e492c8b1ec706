"""A study's statistics and tables, from its JSON (the driver's, or a retired script's): its
runs, mean ± std over seeds, paired differences with their bootstrap intervals, the generic
markdown table and the table of an attack-suite study."""

import statistics

from mdtable import markdown_table


def run_records(record):
    """A study JSON's runs: the list of the older scripts' JSONs as it is; the driver's (a dict
    keyed `<variant>/s<seed>`, whose keys the JSON sorts) by the study's order of variants, then seed."""
    runs = record.get("runs") or []
    if isinstance(runs, list):
        return list(runs)
    rank = {v["name"]: i for i, v in enumerate(record.get("settings", {}).get("variants", []))}
    return sorted(runs.values(), key=lambda r: (rank.get(r.get("variant"), len(rank)), int(r["seed"])))


def mean_std(values, digits=None):
    """`{"mean", "std", "values"}` over seeds (std None for one value), rounded to `digits`."""
    r = (lambda x: x) if digits is None else (lambda x: round(x, digits))
    return {"mean": r(statistics.mean(values)) if values else None,
            "std": r(statistics.stdev(values)) if len(values) > 1 else None, "values": values}


def pct(m, scale=100, unit="%"):
    """A `mean_std` as `72.4% ± 5.8` (`–` without values)."""
    if m["mean"] is None:
        return "–"
    return f"{scale * m['mean']:.1f}{unit}" + (f" ± {scale * m['std']:.1f}" if m["std"] is not None else "")


def ci(v):
    """A paired comparison as `+d [low, high]`, in points."""
    return f"{100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"


def by_variant(runs, key="variant"):
    """`{variant: {seed: run}}` in the order the runs ran."""
    out = {}
    for r in runs:
        out.setdefault(r[key], {})[r["seed"]] = r
    return out


def correct(runs, version):
    """Per seed, the per-example robust correctness of `runs` (`{seed: run}`) under `version`."""
    from at2l_tf.evaluation import paired as paired_lib

    return {s: paired_lib.decode(r[version]["robust_correct"]) for s, r in runs.items()}


def paired(a, b, version, replicates):
    """B − A over the seeds both ran: per-seed differences of robust accuracy and, with
    per-example correctness under `version`, the paired bootstrap interval."""
    from at2l_tf.evaluation import paired as paired_lib

    seeds = [s for s in b if s in a]
    out = {"per_seed": {str(s): b[s]["robust_accuracy"] - a[s]["robust_accuracy"] for s in seeds}}
    if version and seeds:
        out["bootstrap"] = paired_lib.paired_bootstrap(correct(a, version), correct(b, version), replicates=replicates)
    return out


def report(record, replicates=2000):
    """Per variant, mean ± std over seeds of clean and robust accuracy (where its evaluation gives
    them) and training time; per pair of `settings.pairs`, the paired difference."""
    variants = by_variant(run_records(record))
    settings = record.get("settings", {})
    rows = [{"variant": name, "label": settings.get("labels", {}).get(name, name), "seeds": sorted(runs),
             **{m: mean_std([r[m] for r in runs.values() if r.get(m) is not None])
                for m in ("clean_accuracy", "robust_accuracy", "train_seconds")}}
            for name, runs in variants.items()]
    version = settings.get("evaluation", {}).get("autoattack")
    pairs = {f"{b} − {a}": paired(variants[a], variants[b], version, replicates)
             for a, b in settings.get("pairs", []) if a in variants and b in variants}
    return {"rows": rows, "pairs": pairs}


def markdown(record):
    """The generic table: per variant mean ± std over seeds, then each pair's difference."""
    rep = report(record, replicates=record.get("settings", {}).get("replicates", 2000))
    lines = ["| variant | seeds | clean | **robust** | train s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean_accuracy'])} | **{pct(r['robust_accuracy'])}** "
              f"| {r['train_seconds']['mean']:.0f} |" for r in rep["rows"]]
    if rep["pairs"]:
        lines += ["", "| pair | per seed, points | paired 95% CI |", "| --- | --- | --- |"]
        lines += [f"| {name} | {', '.join(f'{100 * d:+.1f}' for d in p['per_seed'].values())} | "
                  f"{ci(p['bootstrap']) if 'bootstrap' in p else '–'} |" for name, p in rep["pairs"].items()]
    return "\n".join(lines)


def attack_table(record, attacks):
    """The table of an attack-suite study: accuracy per row and `attacks` column, and the
    worst case. Rows: the runs, labelled (the retired preprocessing_tables.py's JSONs: `rows`)."""
    if isinstance(record.get("rows"), dict):
        rows = [(name, row["report"]) for name, row in record["rows"].items()]
    else:
        labels = record["settings"]["labels"]
        rows = [(labels[r["variant"]], r["report"]) for r in run_records(record)]
    cells = []
    for name, rep in rows:
        entry = [rep["attacks"].get(a.label) for a in attacks]
        worst = rep["robust_accuracy"]
        cells.append([name, f"{rep['clean_accuracy']:.1%}",
                      *("–" if e is None else f"{e['accuracy']:.1%}" for e in entry),
                      "–" if worst is None else f"**{worst:.1%}**"])
    return "\n".join(markdown_table(["row", "clean", *(a.header for a in attacks), "**worst case**"], cells))
