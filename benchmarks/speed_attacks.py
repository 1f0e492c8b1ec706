"""Our attacks' speed, the `attacks` family of `speed.py`: PGD against its floor, and our FGSM,
PGD and APGD against IBM ART, eager CleverHans and Foolbox on the same Keras model (what each
figure times: benchmarks/README.md, "What each family times"). The `profile` family uses its
peers too."""

import warnings

import benchlib
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, models

flags.DEFINE_integer("attack_batches", None, "attacks: batches per round (default 2; --quick: 1).")

NAME = "attacks"
FIGURES = ("pgd_efficiency", "pgd_vs_art", "fgsm_vs_art", "pgd_vs_cleverhans_eager", "apgd_vs_art", "pgd_vs_foolbox")
TARGETS = {"pgd_efficiency": ("<=", 1.15), "pgd_vs_art": (">=", 3.0), "fgsm_vs_art": (">=", 2.0),
           "pgd_vs_cleverhans_eager": (">=", 2.0), "apgd_vs_art": (">=", 3.0), "pgd_vs_foolbox": (">=", 2.0)}
SETTINGS = {"models": benchlib.MNIST_MODELS, "batch_size": None, "repeats": (9, 3), "warmup": (2, 1),
            "eps": (0.3, 0.3), "seed": None, "xla": (True, False), "attack_batches": (2, 1),
            "pgd_steps": (10, 3), "apgd_steps": (100, 10)}
NOTES = {"art": "adversarial-robustness-toolbox not installed (pip install -e '.[bench]')",
         "foolbox": "foolbox not installed (pip install -e '.[bench]')"}
PEERS = {"fgsm_vs_art": "art", "pgd_vs_art": "art", "apgd_vs_art": "art", "pgd_vs_foolbox": "foolbox"}
# The figures of `bench_attacks`' rounds and the contenders each one times.
ATTACK_FIGURES = {
    "pgd_efficiency": ("ours_pgd", "input_grad_x_k", "pgd_update_ops_x_k"),
    "fgsm_vs_art": ("ours_fgsm", "art_fgsm"),
    "pgd_vs_art": ("ours_pgd", "art_pgd"),
    "pgd_vs_cleverhans_eager": ("ours_pgd", "cleverhans_eager_pgd"),
    "pgd_vs_foolbox": ("ours_pgd", "foolbox_pgd"),
}
SHOW = ("pgd_efficiency", "pgd_vs_", "fgsm_vs_art", "apgd_vs_art", "images_per_s.", "pgd_breakdown.", "xla.pgd",
        "xla.input_grad")  # The rows of its report.
NOT_ATTACKS = ("input_grad", "pgd_update_ops")  # Contenders that make no adversarials.


def configure(cfg):
    k, eps = cfg["pgd_steps"], cfg["eps"]
    cfg["xla"] = cfg["xla"] and "pgd_efficiency" in cfg["figures"]
    cfg["attack_pgd"] = {"steps": k, "step_size": 2.5 * eps / k, "random_starts": 1}
    cfg["attack_fgsm"] = {"step_size": eps, "random_starts": 0}
    cfg["attack_apgd"] = {"loss": "cross-entropy", "steps": cfg["apgd_steps"], "restarts": 1, "initial_step": 2 * eps,
                          "seed": cfg["seed"], "images": cfg["batch_size"],
                          "labels": "the model's predictions (every image attacked, all steps)"}


def measure(cfg):
    figures = cfg["figures"]
    peers = {p: import_peer(p) for p in NOTES if any(PEERS.get(f) == p for f in figures)}
    out = {"models": {}}
    for name in cfg["models"]:
        record = out["models"][name] = {"sections": {}, "xla": {}}
        bench_attacks(name, cfg, record, peers)
        if "apgd_vs_art" in figures:
            bench_apgd(name, cfg, record, peers["art"])
    if any(v is None for v in peers.values()):
        out["skipped"] = "; ".join(NOTES[p] for p, v in peers.items() if v is None)
    out["targets"] = benchlib.targets(out["models"], TARGETS, figures, {f: NOTES[p] for f, p in PEERS.items()})
    return out


# ------------------------------------------------------------------ the peers


def import_peer(name):
    """The peer library `name` (`art` or `foolbox`), or None when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "PyTorch not found" and the like.
            if name == "art":
                import art.attacks.evasion
                import art.estimators.classification

                return art
            import foolbox

            return foolbox
    except ImportError:
        return None


def cleverhans_eager_pgd(clf, x, y, eps, step, k):
    """CleverHans' PGD-k called eagerly, as its tutorial does, with our PGD's settings
    (L-inf, box [0, 1], true labels, one random start); NumPy in and out."""
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    return projected_gradient_descent(clf, tf.constant(x), eps, step, k, np.inf, clip_min=0.0, clip_max=1.0,
                                      y=tf.constant(y), rand_init=True).numpy()


def art_estimator(art, clf):
    """`clf` (a Keras model giving logits) in ART's `TensorFlowV2Classifier`, box [0, 1]."""
    return art.estimators.classification.TensorFlowV2Classifier(
        model=clf, nb_classes=int(clf.output_shape[-1]), input_shape=tuple(clf.input_shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))


def art_attacks(art, clf, eps, step, k, batch_size):
    """ART's `(FastGradientMethod, ProjectedGradientDescent)` on `clf`: FGSM without random
    start, PGD-k with one and step `step`."""
    estimator, evasion = art_estimator(art, clf), art.attacks.evasion
    return (evasion.FastGradientMethod(estimator, norm=np.inf, eps=eps, num_random_init=0, batch_size=batch_size),
            evasion.ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=step, max_iter=k,
                                             num_random_init=1, batch_size=batch_size, verbose=False))


def art_apgd(art, clf, eps, steps, batch_size):
    """ART's `AutoProjectedGradientDescent` as our `apgd_ce` with one restart: L-inf, one random
    start, untargeted, initial step 2 eps, ART's own cross-entropy (it then re-wraps the model
    with a per-example CE on one-hot labels, which its step-size rule needs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return art.attacks.evasion.AutoProjectedGradientDescent(
            art_estimator(art, clf), norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, targeted=False,
            nb_random_init=1, batch_size=batch_size, loss_type="cross_entropy", verbose=False)


def foolbox_pgd(foolbox, clf, eps, step, k):
    """Foolbox's `LinfPGD` with our PGD-k's settings (`rel_stepsize = step / eps`), called as its
    documentation does; NumPy in, its clipped adversarials out."""
    fmodel = foolbox.TensorFlowModel(clf, bounds=(0.0, 1.0))
    attack = foolbox.attacks.LinfPGD(steps=k, rel_stepsize=step / eps, random_start=True)
    return lambda x, y: attack(fmodel, tf.constant(x), tf.constant(y), epsilons=eps)[1].numpy()


# ------------------------------------------------------------------ the figures


def _linf_check(x, x_adv, y, model, eps):
    """Validity of adversarials: inside the eps ball and the box, and the loss raised;
    `error_adv`, the share of `x_adv` misclassified (against the labels `y`)."""
    delta = float(np.max(np.abs(x_adv.astype(np.float64) - x.astype(np.float64))))

    def ce_and_error(z):
        logits = model(tf.constant(z), training=False)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return float(ce), float(np.mean(np.argmax(logits.numpy(), axis=-1) != y))

    ce_adv, error_adv = ce_and_error(x_adv)
    return {"max_linf": round(delta, 6),
            "in_eps_ball": delta <= eps + 1e-6,  # Float32 rounding of x + eta may overshoot by an ulp.
            "in_box": bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
            "ce_clean": round(ce_and_error(x)[0], 4), "ce_adv": round(ce_adv, 4), "error_adv": round(error_adv, 4)}


def _attack_model(model_name, cfg):
    """The untrained model every attack figure runs on (seed `--seed`), and its `model_fn`."""
    keras.utils.set_random_seed(cfg["seed"])
    clf = models.get_model(model_name)
    return clf, lambda z: clf(z, training=False)


def _record_times(record, wall, cpu, n_images, n_batches):
    """Adds the contenders' seconds per batch, rounds and images/s to `record` (merging);
    returns `({name: median seconds per round}, {name: images/s})`."""
    sec = benchlib.medians(wall)
    record.setdefault("attack_s_per_batch", {}).update({n: round(v / n_batches, 5) for n, v in sec.items()})
    record.setdefault("attack_cpu_s_per_batch", {}).update(
        {n: round(v / n_batches, 5) for n, v in benchlib.medians(cpu).items()})
    record.setdefault("attack_rounds_s", {}).update({n: [round(v, 4) for v in t] for n, t in wall.items()})
    ips = {n: n_images / v for n, v in sec.items() if not n.startswith(NOT_ATTACKS)}
    record.setdefault("images_per_s", {}).update({n: round(v, 1) for n, v in ips.items()})
    return sec, ips


def _record_validity(record, model_name, checks):
    """Adds the contenders' validity checks to `record`; raises if one is not a valid attack."""
    record.setdefault("validity", {}).update(checks)
    bad = [n for n, v in checks.items() if not (v["in_eps_ball"] and v["in_box"])]
    if bad:
        raise AssertionError(f"{model_name}: invalid adversarials from {bad}: {checks}")


def bench_attacks(model_name, cfg, record, peers):
    """The `ATTACK_FIGURES` among the figures, side by side; a figure whose peer library is
    missing (`peers[name]` None) is recorded as None."""
    clf, model_fn = _attack_model(model_name, cfg)
    batches = benchlib.mnist_batches("test", cfg["attack_batches"], cfg["batch_size"])
    x_all, y_all = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    wanted = [f for f in ATTACK_FIGURES if f in cfg["figures"]]
    timed = [f for f in wanted if f not in PEERS or peers[PEERS[f]] is not None]
    record.update({f: None for f in wanted if f not in timed})  # Its peer is not installed.
    if not timed:
        return
    needed = {c for f in timed for c in ATTACK_FIGURES[f]}
    if cfg["xla"]:
        needed |= {"ours_pgd_xla", "input_grad_x_k_xla"}
    builders = _contenders(clf, model_fn, cfg, batches, (x_all, y_all), peers)
    contenders = {name: build() for name, build in builders.items() if name in needed}
    with benchlib.section(f"{model_name}: attacks", record["sections"], "attacks"):
        wall, cpu, outputs = benchlib.interleaved(contenders, repeats=cfg["repeats"], warmup=cfg["warmup"])
    sec, ips = _record_times(record, wall, cpu, len(y_all), len(batches))
    _record_ratios(record, timed, cfg, sec, ips, benchlib.medians(cpu), len(batches))
    # Every contender made valid adversarials of the same budget (last timed call).
    _record_validity(record, model_name, {name: _linf_check(x_all, out, y_all, clf, cfg["eps"])
                                          for name, out in outputs.items() if not name.startswith(NOT_ATTACKS)})


def _contenders(clf, model_fn, cfg, batches, all_images, peers):
    """{name: builder} of every contender `bench_attacks` can time, in the order of its rounds
    (rotated each round); a builder returns the call that attacks all `batches` once
    (`all_images`: the batches' `(x, y)` in one array each, for ART's own batching)."""
    k, eps, bs = cfg["pgd_steps"], cfg["eps"], cfg["batch_size"]
    step = 2.5 * eps / k  # at2l_tf's default PGD step, given to every contender explicitly.
    x_all, y_all = all_images

    def compiled(attack_fn, jit_compile=False):  # As `evaluation` compiles: one graph per batch shape.
        return tf.function(lambda x, y: attack_fn(model_fn, x, y), reduce_retracing=True, jit_compile=jit_compile)

    def input_grad(jit_compile=False):
        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x)))
            return tape.gradient(loss, x)

        return grad

    def ours(run):
        return lambda: np.concatenate([run(x, y).numpy() for x, y in batches])

    def k_grads(grad):  # The floor of PGD-k: k input gradients per batch, one call each.
        def go():
            for x, y in batches:
                x = tf.constant(x)
                for _ in range(k):
                    g = grad(x, y).numpy()
            return g

        return go

    def update_ops():  # PGD-k minus its gradients: k sign steps and projections, one graph.
        g = tf.random.stateless_normal((bs, *clf.input_shape[1:]), seed=(cfg["seed"], 1))

        @tf.function(reduce_retracing=True)
        def run(x):
            x_adv = x
            for _ in range(k):
                x_adv = tf.clip_by_value(x_adv + step * tf.sign(g), 0.0, 1.0)
                x_adv = tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), 0.0, 1.0)
            return x_adv

        return lambda: np.concatenate([run(x).numpy() for x, _ in batches])

    def art_attack(index):  # ART's generate batches all images itself (batch_size = ours).
        attack = art_attacks(peers["art"], clf, eps, step, k, bs)[index]
        return lambda: attack.generate(x_all, y_all)

    def foolbox():  # Foolbox has no batching of its own: one call per batch, as ours.
        run = foolbox_pgd(peers["foolbox"], clf, eps, step, k)
        return lambda: np.concatenate([run(x, y) for x, y in batches])

    pgd_fn = attacks.make_attack("pgd", eps=eps, steps=k, step_size=step)
    return {
        "ours_fgsm": lambda: ours(compiled(attacks.make_attack("fgsm", eps=eps))),
        "ours_pgd": lambda: ours(compiled(pgd_fn)),
        "input_grad_x_k": lambda: k_grads(input_grad()),
        "pgd_update_ops_x_k": update_ops,
        "cleverhans_eager_pgd": lambda: lambda: np.concatenate(
            [cleverhans_eager_pgd(clf, x, y, eps, step, k) for x, y in batches]),
        "art_fgsm": lambda: art_attack(0),
        "art_pgd": lambda: art_attack(1),
        "foolbox_pgd": foolbox,
        "ours_pgd_xla": lambda: ours(compiled(pgd_fn, jit_compile=True)),
        "input_grad_x_k_xla": lambda: k_grads(input_grad(jit_compile=True)),
    }


def _record_ratios(record, timed, cfg, sec, ips, med_cpu, n):
    """Adds the `timed` figures to `record` from the contenders' median seconds per round
    (`sec`, `med_cpu`) and images/s over `n` batches: PGD's efficiency and breakdown, ours
    against each peer, and XLA's."""
    k = cfg["pgd_steps"]
    if "pgd_efficiency" in timed:
        record["pgd_efficiency"] = round(sec["ours_pgd"] / sec["input_grad_x_k"], 3)
        record["pgd_efficiency_cpu"] = round(med_cpu["ours_pgd"] / med_cpu["input_grad_x_k"], 3)
        record["pgd_breakdown"] = {
            "k": k, "input_grads_s_per_batch": round(sec["input_grad_x_k"] / n, 5),
            "update_ops_s_per_batch": round(sec["pgd_update_ops_x_k"] / n, 5),
            "rest_s_per_batch": round((sec["ours_pgd"] - sec["input_grad_x_k"] - sec["pgd_update_ops_x_k"]) / n,
                                      5),
        }
        if "cleverhans_eager_pgd" in sec:  # What eager execution adds to each PGD step over our one graph.
            record["pgd_breakdown"]["cleverhans_eager_overhead_s_per_step"] = round(
                (sec["cleverhans_eager_pgd"] - sec["ours_pgd"]) / (n * k), 5)
    for figure in ("pgd_vs_cleverhans_eager", "fgsm_vs_art", "pgd_vs_art", "pgd_vs_foolbox"):
        if figure in timed:
            mine, theirs = ATTACK_FIGURES[figure]
            record[figure] = round(ips[mine] / ips[theirs], 3)
    if "pgd_vs_foolbox" in timed:  # Cross-check: CPU time, all threads.
        record["pgd_vs_foolbox_cpu"] = round(med_cpu["foolbox_pgd"] / med_cpu["ours_pgd"], 3)
    if cfg["xla"] and "pgd_efficiency" in timed:
        record["xla"].update(pgd_efficiency=round(sec["ours_pgd_xla"] / sec["input_grad_x_k_xla"], 3),
                             pgd_speedup=round(sec["ours_pgd"] / sec["ours_pgd_xla"], 3),
                             input_grad_speedup=round(sec["input_grad_x_k"] / sec["input_grad_x_k_xla"], 3))


def bench_apgd(model_name, cfg, record, art):
    """`apgd_vs_art` on the first batch, the same untrained model; ART draws its random start
    from NumPy's global generator, ours from seed `--seed`.

    Ours is a Python loop over one compiled APGD iteration (`attacks.apgd`); a
    `tf.while_loop` around the model's gradient used to run, per trace and at random, up to
    ~1.7x slower with oneDNN (`speed_attacks_cpu.json` was measured with that loop).
    """
    if art is None:
        record["apgd_vs_art"] = None
        return
    clf, model_fn = _attack_model(model_name, cfg)
    n, eps, bs = cfg["apgd_steps"], cfg["eps"], cfg["batch_size"]
    ((x, y_true),) = benchlib.mnist_batches("test", 1, bs)
    # The model's own predictions as labels, given to both. Both APGDs leave alone the
    # examples misclassified when a run starts and neither stops within a run (ours: a fixed
    # number of iterations; ART: once every loss is exactly 0, which cross-entropy does not
    # reach here), so every image is attacked for all `n` iterations on both sides. With the
    # true labels the untrained model is right on ~10% of the batch: both would attack ~13
    # images, and the ratio would measure per-call overhead instead.
    labels = np.argmax(clf(x, training=False).numpy(), axis=-1).astype(np.int64)
    theirs = art_apgd(art, clf, eps, n, bs)
    contenders = {  # Ours called eagerly, as evaluate calls it (the registry does not compile APGD).
        "ours_apgd": lambda: attacks.apgd_ce(model_fn, x, labels, eps=eps, steps=n, restarts=1,
                                             seed=cfg["seed"]).numpy(),
        "art_apgd": lambda: theirs.generate(x, labels),
    }
    with benchlib.section(f"{model_name}: APGD-CE ({n} iterations)", record["sections"], "attacks_apgd"):
        wall, cpu, outputs = benchlib.interleaved(contenders, repeats=cfg["repeats"], warmup=cfg["warmup"])
    _, ips = _record_times(record, wall, cpu, len(labels), 1)
    med_cpu = benchlib.medians(cpu)
    record["apgd_vs_art"] = round(ips["ours_apgd"] / ips["art_apgd"], 3)
    record["apgd_vs_art_cpu"] = round(med_cpu["art_apgd"] / med_cpu["ours_apgd"], 3)
    record["apgd_labels"] = {"labels": "the model's predictions on the clean batch", "attacked": len(labels),
                             "clean_accuracy_true_labels": round(float(np.mean(labels == y_true)), 4)}
    _record_validity(record, model_name, {name: _linf_check(x, out, labels, clf, eps) for name, out in outputs.items()})
