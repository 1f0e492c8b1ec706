"""The work directory of an evaluation (phase 5): what makes a resume safe.

`evaluation_identity` is the flat dict of the settings that decide an
evaluation's figures; `open_workdir` opens the `ResultStore` of a work
directory for it, refusing one that holds another evaluation's results (one
line naming every difference) before anything in it is touched.
"""

import os

import at2l_tf
from at2l_tf import attacks, savedmodel
from at2l_tf import identity as run_identity
from at2l_tf.errors import ConfigError
from at2l_tf.evaluation import store as store_lib
from at2l_tf.evaluation.specs import attack_specs
from at2l_tf.training import backup


def evaluation_identity(config, loaded, eps):
    """The settings that decide an evaluation's figures, as a flat dict keyed by flag name.

    A workdir holding results of another identity is refused. Left out: where
    the outputs go (`--output_json`, `--workdir`, `--curve_output`), how the
    work is run or shown (`--strategy`, `--verbose`) and `--record`; each
    attack's parameters are in as they resolve (unset flags: the attack's
    defaults); the model is in by its resolved path and digest
    (`savedmodel.model_digest`), so a new version under the same export root
    is another evaluation; the attacks' precision is in as it resolves
    (`auto` is bfloat16 on one CPU and float32 on another).

    Args:
        config: an `EvaluationConfig`.
        loaded: its `evaluation.loading.LoadedModels`.
        eps: the resolved radius.
    """
    target, a, im = loaded.target, config.attacks, config.images
    sources = config.model.source_model_dirs
    ident = {
        "model_dir": os.path.abspath(target.path),
        "model_digest": savedmodel.model_digest(target.path),
        "dataset": loaded.dataset,
        "data_dir": im.data_dir,
        "image_dir": loaded.image_dir,
        "split": im.split,
        "image_size": loaded.image_size,
        "attacks": list(a.names),
        "eps": eps,
        "eps_sweep": [float(e) for e in a.eps_sweep],
        "num_examples": im.num_examples,
        "batch_size": im.batch_size,
        "seed": a.seed,
        "adaptive": a.adaptive,
        "eot_draws": a.eot_draws,
        "attack_precision": "float32" if not loaded.precision.mixed else "bfloat16",
        "source_model_dir": [os.path.abspath(p) for p in sources],
        "source_model_digest": [savedmodel.model_digest(p) for p in sources],
        "package_version": at2l_tf.__version__,
    }
    for spec in attack_specs(a, eps):
        entry = attacks.get_entry(spec.name)
        flag_of = {p.name: entry.flag_name(p) for p in entry.user_params}
        for name, value in spec.params.items():
            if name not in ("eps", "seed"):
                ident[flag_of.get(name, f"{spec.name}_{name}")] = value
    return ident


def open_workdir(workdir, identity):
    """The `ResultStore` of `workdir` for an evaluation of `identity`.

    Raises:
        ConfigError: one line naming every setting that differs when the
            workdir holds another evaluation, or when it cannot be written.
            Nothing in it is changed then.
    """
    store = store_lib.ResultStore(workdir)
    try:
        recorded = store.identity()
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"workdir {workdir} holds an unreadable {store_lib.IDENTITY_FILE} ({e}); "
            "delete it to start again"
        ) from None
    if recorded is not None:
        # Every difference, on one line: a changed flag may change others
        # (--pgd_steps changes the default step size).
        run_identity.require_same(recorded, identity, where=f"workdir {workdir}", what="an evaluation")
    backup.check_writable(workdir)
    store.start(identity)
    return store


__all__ = ["evaluation_identity", "open_workdir"]
