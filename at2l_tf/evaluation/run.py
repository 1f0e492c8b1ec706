"""One robustness evaluation from an `EvaluationConfig`, in phases that run one way:

    config -> strategy -> models -> attacks -> workdir -> data -> measure -> finish

1. **config**: `config.validate()`, before anything is loaded;
2. **strategy** (`start_workers`): MultiWorkerMirroredStrategy first (it must exist
   before any other TensorFlow op), then the seed;
3. **models** (`evaluation.loading.load_models`): the target, the sources,
   the dataset's spec, the attacks' precision and the bfloat16 copies it needs;
4. **attacks** (`evaluation.specs.attack_specs_for`): one `AttackSpec` per
   attack, adaptive through a defence layer, on a `SearchModel` when the
   search is bfloat16;
5. **workdir** (`evaluation.workdir.open_workdir`): refuse another
   evaluation's results, so that a killed run continues where it stopped;
6. **data** (`evaluation.loading.evaluation_data`): the first `num_examples`
   images of the split, and this worker's share of the batches (`worker_partition`);
7. **measure** (`measure`): `evaluation.robustness_report`, and the eps sweep
   (`run_eps_sweep`);
8. **finish** (`finish`, chief only): the masking checks, the table on
   stdout, the JSON, the robustness record.

The `evaluate` command (`python -m at2l_tf.evaluate`) maps its flags onto an
`EvaluationConfig` and calls `evaluate`; its help describes the outputs, the
resume and the workers. From Python:

    from at2l_tf.evaluation.config import (
        AttacksSection, EvaluationConfig, ImagesSection, ModelSection, OutputSection)
    from at2l_tf.evaluation.run import evaluate

    report = evaluate(EvaluationConfig(
        model=ModelSection(model_dir="savedmodels/mnist_reference"),
        images=ImagesSection(num_examples=1000, batch_size=250),
        attacks=AttacksSection(names=("apgd_ce", "apgd_t"), eps=0.3,
                               params={"apgd_ce": {"steps": 50}}),
        output=OutputSection(output_json="aa.json", verbose=0),
    ))
    print(report["robust_accuracy"])
"""

import os
import time

import keras

from at2l_tf import attacks, errors, fileio
from at2l_tf.evaluation import loading, masking, plots
from at2l_tf.evaluation import record as record_lib
from at2l_tf.evaluation import specs as specs_lib
from at2l_tf.evaluation import store as store_lib
from at2l_tf.evaluation import workdir as workdir_lib
from at2l_tf.evaluation.report import Partition, robustness_report
from at2l_tf.evaluation.summary import format_report
from at2l_tf.log import log
from at2l_tf.training import distribute


def evaluate(config):
    """Measures a model's robustness as `config` says; returns the report.

    Runs the phases of this module's docstring, in order (one way, as
    `experiment.run`).

    Args:
        config: an `EvaluationConfig`.

    Returns:
        The report dict (also written to `config.output.output_json`); on a
        worker other than the chief, its report without the chief's additions.

    Raises:
        ConfigError, DatasetError, FileNotFoundError, ModelLoadError: bad
            input, one line naming it; nothing is written.
        errors.Interrupted: Ctrl-C; the results so far are in the workdir, and
            the same call continues from them.
    """
    # 1. Config.
    config.validate()
    # 2. Strategy: MultiWorkerMirroredStrategy first, before any other TensorFlow op.
    worker, strategy = start_workers(config)
    started = time.time()
    keras.utils.set_random_seed(config.attacks.seed)
    # 3. Models.
    loaded = loading.load_models(config)
    # 4. Attacks.
    eps = specs_lib.resolve_eps(config, loaded.dataset, loaded.image_dir)
    specs = specs_lib.attack_specs_for(config, eps, loaded)
    # 5. Workdir. (Called through `workdir_lib` so that a wrapped function is the one run.)
    workdir = config.output.resolved_workdir()
    store = None
    if workdir:
        identity = workdir_lib.evaluation_identity(config, loaded, eps)
        store = workdir_lib.open_workdir(workdir, identity)
    if worker.is_chief:
        specs_lib.warn_weak_attacks(specs, eps)
        if loaded.precision.warning:
            log(f"warning: {loaded.precision.warning}")
    # 6. Data.
    ds = loading.evaluation_data(config, loaded)
    share = worker_partition(worker, strategy)
    log(describe(config, loaded, eps, worker, workdir))
    # 7. Measure.
    report, curve = measure(config, loaded, ds, specs, store, workdir, share, worker)
    # 8. Finish.
    return finish(config, loaded, report, ds, eps, curve, worker, started)


def start_workers(config):
    """Phase 2: `(worker, strategy)`: this process's place among the workers of
    `TF_CONFIG` and, for `multi_worker`, the strategy (else `None`), created
    before any other TensorFlow op.

    Raises:
        ConfigError: a malformed `TF_CONFIG`.
    """
    worker = distribute.worker_from_env(config.strategy)
    strategy = distribute.make_strategy(config.strategy) if config.strategy == "multi_worker" else None
    return worker, strategy


def worker_partition(worker, strategy):
    """This worker's share of the batches: all of them on one process; with
    several workers, the batches b with b mod n = k, their results gathered
    through the strategy's collectives."""
    if worker.num_workers <= 1:
        return Partition()
    return Partition(
        index=worker.shard_index,
        count=worker.num_workers,
        gather=lambda payload: distribute.all_gather_bytes(strategy, worker, payload),
        name=f"{worker.name}: ",
    )


def describe(config, loaded, eps, worker, workdir):
    """The evaluation's first progress line: the model, the images, the mode
    (white-box or transfer), the attacks, eps, the worker and the workdir."""
    a = config.attacks
    mode = (f"transfer from {', '.join(config.model.source_model_dirs)}"
            if loaded.sources else "white-box")
    names = ", ".join(a.names) or "clean only"
    search_note = "" if loaded.search is None else "; attacks search in bfloat16, verdicts float32"
    return (
        f"evaluating {loaded.target.path} on the first {config.images.num_examples} "
        f"{loaded.dataset} {config.images.split} images ({mode}): {names}, eps={eps:.4g}{search_note}"
        + (f"; worker {worker.name} of {worker.num_workers}" if worker.num_workers > 1 else "")
        + (f"; results kept in {workdir}" if workdir else "")
    )


def measure(config, loaded, ds, specs, store, workdir, share, worker):
    """Phase 7: `(report, curve)`: `evaluation.robustness_report` of `specs` on
    `ds` (with every example's results, for the masking checks), and the eps
    sweep's curve (`run_eps_sweep`, or `None` without a sweep).

    Raises:
        errors.Interrupted: Ctrl-C, saying where the finished results are kept.
    """
    a, out = config.attacks, config.output
    try:
        report = robustness_report(
            loaded.target.model_fn,
            ds,
            specs,
            sources=specs_lib.attack_sources(loaded) or None,
            num_examples=config.images.num_examples,
            verbose=out.verbose,
            per_example=True,
            store=store,
            partition=share,
        )
        curve = None
        if a.eps_sweep:
            curve = run_eps_sweep(config, loaded, ds, list(a.eps_sweep), out.curve_stem(), workdir,
                                  share, write=worker.is_chief)
    except KeyboardInterrupt:
        if workdir:
            kept = (f"the results of every finished batch and attack are in {workdir}; run the "
                    "same command again to continue")
        else:
            kept = "nothing was kept (no --workdir or --output_json)"
        raise errors.Interrupted(f"interrupted; {kept}") from None
    return report, curve


def finish(config, loaded, report, ds, eps, curve, worker, started):
    """Phase 8: the report's settings; on the chief, the masking checks, the
    table on stdout, the JSON and the robustness record.

    Returns:
        `report`, completed (the per-example results are dropped from it).
    """
    per_example = report.pop("per_example")
    add_settings(report, config, loaded, eps)
    if not worker.is_chief:
        return report  # The chief prints, writes and records.
    if not config.model.source_model_dirs:
        report["flags"] = masking_flags(report, per_example, loaded.target, ds)
    if curve is not None:
        report["eps_sweep"] = curve
    report["seconds"] = round(time.time() - started, 1)
    print(format_report(report))
    for flag in report.get("flags", []):
        log(f"warning: {flag['message']}")
    write_outputs(config, loaded, report, eps)
    return report


def add_settings(report, config, loaded, eps):
    """Adds what was evaluated, and how, to `report`: the model, the images,
    eps, seed, sources, the defence layer and adaptive mode, the bfloat16
    search (if any) and the export's `model` and `objective` metadata (an older
    export's `defense`, read as `objective`: `savedmodel.load_classifier`)."""
    a, target = config.attacks, loaded.target
    sources = config.model.source_model_dirs
    report.update(
        model_dir=config.model.model_dir,
        model_path=target.path,
        dataset=loaded.dataset,
        split=config.images.split,
        eps=eps,
        seed=a.seed,
        source_model_dirs=list(sources),
        preprocessing=target.preprocessing_name,
        adaptive=None if sources else a.adaptive,
    )
    if loaded.precision.mixed:
        report["attack_precision"] = {
            "search": "bfloat16", "verdicts": "float32", "choice": loaded.precision.choice,
            "reason": loaded.precision.reason,
        }
    for key in ("model", "objective"):
        if key in target.metadata:
            report[key] = target.metadata[key]


def masking_flags(report, per_example, target, ds):
    """The gradient-masking checks of a white-box report, on the first batch of `ds`
    (`evaluation.masking.check_gradient_masking`): a list of `{"check", "message"}`."""
    x, y = next(iter(ds))
    linf = report["robust_accuracy_attacks"]
    entry = lambda k: attacks.get_entry(report["attacks"][k]["attack"])  # noqa: E731
    return masking.check_gradient_masking(
        target.model_fn,
        x,
        y,
        # AutoAttack runs Square itself: it is neither side of the comparison.
        per_example={k: per_example[k] for k in linf if not entry(k).composite},
        black_box=[k for k in linf if entry(k).black_box],
    )


def write_outputs(config, loaded, report, eps):
    """Writes `report` to `--output_json` (atomically) and, with `--record`, its
    summary into the SavedModel version's `assets/robustness.json`."""
    a, out = config.attacks, config.output
    if out.output_json:
        fileio.atomic_write_json(out.output_json, report)
        log(f"wrote {out.output_json}")
    if out.record:
        target = loaded.target
        record = record_lib.make_record(
            report, evaluated_by="evaluate", dataset=loaded.dataset, split=config.images.split,
            eps=eps, seed=a.seed, preprocessing=target.preprocessing_name, adaptive=a.adaptive,
        )
        log(f"recorded the robustness in {record_lib.write_record(target.path, record)}")


def run_eps_sweep(config, loaded, ds, sweep, stem, workdir=None, partition=None, write=True):
    """Accuracy against eps for each attack of `config` and their worst case.

    Each eps keeps its results in `<workdir>/sweep-NN/` (resumable as the main
    report). Writes `<stem>.csv` and `<stem>.png` (if `write`) and returns
    `{"eps": [...], "curves": {label: [accuracy, ...]}, "csv": path, "png": path}`.
    """
    curves = {}
    for i, eps in enumerate(sweep):
        if write:
            log(f"eps sweep {i + 1}/{len(sweep)}: eps={eps:.4g}")
        store = None
        if workdir:
            store = store_lib.ResultStore(os.path.join(workdir, f"sweep-{i:02d}"))
            store.start({"eps": eps})  # The workdir's identity covers the sweep.
        rep = robustness_report(
            loaded.target.model_fn,
            ds,
            specs_lib.attack_specs_for(config, eps, loaded),
            sources=specs_lib.attack_sources(loaded) or None,
            num_examples=config.images.num_examples,
            verbose=config.output.verbose,
            store=store,
            partition=partition,
        )
        for label, entry in rep["attacks"].items():
            curves.setdefault(label, []).append(entry["accuracy"])
        worst = rep["robust_accuracy"]
        curves.setdefault(plots.WORST_CASE, []).append(
            rep["clean_accuracy"] if worst is None else worst
        )
    # Worst case last, so that it is drawn on top and is the CSV's last column.
    curves[plots.WORST_CASE] = curves.pop(plots.WORST_CASE)
    csv_path, png_path = stem + ".csv", stem + ".png"
    if write:
        csv_path = plots.write_curve_csv(csv_path, sweep, curves)
        png_path = plots.plot_curves(
            png_path, sweep, curves, title=os.path.basename(config.model.model_dir.rstrip("/")),
            num_examples=config.images.num_examples,
        )
        log(f"wrote {csv_path} and {png_path}")
    return {"eps": sweep, "curves": curves, "csv": csv_path, "png": png_path}


__all__ = ["evaluate", "finish", "measure", "run_eps_sweep"]
