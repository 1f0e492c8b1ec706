r"""Speed of our attacks: PGD against its floor, and our FGSM, PGD and APGD against IBM
ART, eager CleverHans and Foolbox on the same Keras model.

    python benchmarks/speed_attacks.py --output_json=/tmp/speed_attacks.json  # ~12 min, 2 CPUs
    python benchmarks/speed_attacks.py --quick                                # < 1 min
    python benchmarks/speed_attacks.py --figures=apgd_vs_art,pgd_vs_foolbox   # the peers only

One family of `speed.py`'s figures (which runs this and `speed_training.py`
together); the flags, timing and top-level JSON keys they share are
`speed.py`'s (`benchlib.speed_main`). The attacks run on untrained models
(seed `--seed`) and batches of real MNIST test images. `--quick`:
`mnist_small` only, 3 rounds, 1 warm-up, PGD-3, APGD-10, 1 batch, no XLA.
Where the time goes, and what bounds each ratio: `profile_attacks.py`.

Figures, per model (the JSON keys under `models.<name>`):

* `pgd_efficiency`: our PGD-k (`at2l_tf.attacks.pgd`, k = `--pgd_steps` (10),
  in one `tf.function` as `evaluation` compiles it) over k calls of one input
  gradient `∇x CE(model(x, training=False), y)` in its own `tf.function`, the
  floor. Target <= 1.15. `pgd_breakdown` splits PGD into gradients, the
  sign/projection ops alone, and the rest.
* `fgsm_vs_art`, `pgd_vs_art`: images/s of our FGSM and PGD-k over ART 1.20's
  `FastGradientMethod` / `ProjectedGradientDescent` on a `TensorFlowV2Classifier`
  wrapping the same Keras model; same eps (0.3), step size (`2.5 eps / k`), k,
  batch size, labels, and one random start for PGD (none for FGSM). Both sides
  take and return NumPy images; ART's time includes what its `generate` always
  does (PGD's success-rate pass). Targets >= 2 and >= 3. `null`, with a
  top-level `"skipped"` note, when ART is not installed.
* `pgd_vs_cleverhans_eager`: images/s of our compiled PGD-k over CleverHans'
  `projected_gradient_descent` called eagerly in a Python loop over batches, as
  its tutorial does (same eps, step, k, labels, clip box and random start, so
  the work is identical; only compilation differs). Target >= 2.
* `pgd_vs_foolbox`: images/s of our compiled PGD-k over Foolbox 3.3's
  `LinfPGD(steps=k, rel_stepsize=2.5/k, random_start=True)` (0.25 for k = 10)
  on `foolbox.TensorFlowModel(model, bounds=(0, 1))`, called per batch as its
  documentation does, `attack(fmodel, x, y, epsilons=eps)`, with the true
  labels; timed in the same rounds as the PGD figures above. Its time includes
  what that call always does (an input-bounds check, and one forward pass to
  tell which outputs are adversarial). Target >= 2. `null` when Foolbox is not
  installed.
* `apgd_vs_art`: images/s of our `apgd_ce` (`--apgd_steps` (100) iterations,
  1 restart, initial step 2 eps, seed `--seed`, called eagerly as `evaluate`
  does) over ART 1.20's `AutoProjectedGradientDescent` (L-inf, `eps_step` 2 eps,
  same iterations, `nb_random_init=1`, `loss_type="cross_entropy"`, untargeted,
  `batch_size` the batch) on the `TensorFlowV2Classifier` above, on one batch
  of 128 test images, in rounds of their own. Labels: the model's predictions,
  so that both attack every image for every iteration (both skip images
  already misclassified when a run starts, neither stops within a run; with
  the true labels the untrained model is right on ~10% of the batch).
  `apgd_labels` records this. ART's APGD computes the loss once more per
  iteration (a forward pass apart from its gradient's); ours takes it from the
  gradient's forward pass. Target >= 3.
* also attack seconds per batch, `images_per_s`, `validity` (every
  contender's `max ||x_adv - x||_inf <= eps`, inside [0, 1], loss raised,
  `error_adv` the share misclassified), `apgd_vs_art_cpu` and
  `pgd_vs_foolbox_cpu` (the same ratios in CPU time), and under `xla` our PGD
  and its floor compiled with `jit_compile=True`, timed in the same rounds as
  the plain ones.
"""

import statistics
import sys

# at2l_tf first: it sets TensorFlow's environment defaults, which TensorFlow reads
# once when it loads, so the benchmark runs TensorFlow as the train command does.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, models

flags.DEFINE_integer(
    "attack_batches", None, "Batches per attack-throughput round (default 2; --quick: 1)."
)
flags.DEFINE_integer(
    "pgd_steps", None, "PGD steps k of the attack figures (default 10; --quick: 3)."
)
flags.DEFINE_integer(
    "apgd_steps", None, "APGD iterations of apgd_vs_art (default 100; --quick: 10)."
)
FLAGS = flags.FLAGS

FIGURES = (
    "pgd_efficiency", "pgd_vs_art", "fgsm_vs_art", "pgd_vs_cleverhans_eager", "apgd_vs_art",
    "pgd_vs_foolbox",
)
XLA_FIGURES = ("pgd_efficiency",)
PEERS = benchlib.PEERS
# The PGD-k figures of `bench_attacks` and the contenders each one times (side by side).
ATTACK_FIGURES = {
    "pgd_efficiency": ("ours_pgd", "input_grad_x_k", "pgd_update_ops_x_k"),
    "fgsm_vs_art": ("ours_fgsm", "art_fgsm"),
    "pgd_vs_art": ("ours_pgd", "art_pgd"),
    "pgd_vs_cleverhans_eager": ("ours_pgd", "cleverhans_eager_pgd"),
    "pgd_vs_foolbox": ("ours_pgd", "foolbox_pgd"),
}


def configure(cfg, figures, pick):
    """This family's settings, into `cfg`."""
    del figures
    cfg["attack_batches"] = pick(FLAGS.attack_batches, 2, 1)
    cfg["pgd_steps"] = pick(FLAGS.pgd_steps, 10, 3)
    cfg["apgd_steps"] = pick(FLAGS.apgd_steps, 100, 10)
    return ["attack_batches", "pgd_steps", "apgd_steps"]


def settings(cfg):
    k, eps = cfg["pgd_steps"], cfg["eps"]
    return {
        **{key: cfg[key] for key in ("attack_batches", "pgd_steps", "apgd_steps")},
        "attack_pgd": {"steps": k, "step_size": 2.5 * eps / k, "random_starts": 1},
        "attack_fgsm": {"step_size": eps, "random_starts": 0},
        "attack_apgd": {
            "loss": "cross-entropy",
            "steps": cfg["apgd_steps"],
            "restarts": 1,
            "initial_step": 2 * eps,
            "seed": cfg["seed"],
            "images": cfg["batch_size"],
            "labels": "the model's predictions (every image attacked, all steps)",
        },
    }


def measure(model_name, cfg, record, figures, peers):
    """The attack figures among `figures`, on `model_name`, into `record`."""
    test_arrays = benchlib.mnist_arrays("test")
    bench_attacks(model_name, test_arrays, cfg, record, figures, peers)
    if "apgd_vs_art" in figures:
        bench_apgd(model_name, test_arrays, cfg, record, peers["art"])


def table_rows(table):
    for key, label in (
        ("pgd_efficiency_cpu", "pgd_efficiency, CPU time"),
        ("apgd_vs_art_cpu", "apgd_vs_art, CPU time"),
        ("pgd_vs_foolbox_cpu", "pgd_vs_foolbox, CPU time"),
    ):
        if table.have(key):
            table.row(label, table.cells(lambda r: r[key], ".3f"))
    keys = ["ours_fgsm", "art_fgsm", "ours_pgd", "art_pgd", "cleverhans_eager_pgd", "foolbox_pgd",
            "ours_apgd", "art_apgd"]
    for key in keys:
        if any(key in table.res[n].get("images_per_s", {}) for n in table.names):
            table.row(f"img/s {key}", table.cells(lambda r: r["images_per_s"].get(key), ".0f"))
    if table.have("xla", "pgd_efficiency"):
        table.row("XLA pgd_efficiency", table.cells(lambda r: r["xla"]["pgd_efficiency"], ".2f"))
        table.row("XLA pgd speed-up", table.cells(lambda r: r["xla"]["pgd_speedup"], ".2f"))


def _rounded(times, digits=4):
    return {name: [round(v, digits) for v in t] for name, t in times.items()}


def _linf_check(x, x_adv, y, model, eps):
    """Validity of adversarials: inside the eps ball and the box, and the loss raised.

    Also `error_adv`, the share of `x_adv` misclassified (against the labels `y`).
    """
    delta = float(np.max(np.abs(x_adv.astype(np.float64) - x.astype(np.float64))))

    def ce_and_error(z):
        logits = model(tf.constant(z), training=False)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        error = np.mean(np.argmax(logits.numpy(), axis=-1) != y)
        return float(ce), float(error)

    ce_adv, error_adv = ce_and_error(x_adv)
    return {
        "max_linf": round(delta, 6),
        # Float32 rounding of x + eta may overshoot eps by an ulp.
        "in_eps_ball": delta <= eps + 1e-6,
        "in_box": bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
        "ce_clean": round(ce_and_error(x)[0], 4),
        "ce_adv": round(ce_adv, 4),
        "error_adv": round(error_adv, 4),
    }


def _attack_model(model_name, cfg):
    """The untrained model every attack figure runs on (seed `--seed`), and its `model_fn`."""
    keras.utils.set_random_seed(cfg["seed"])
    clf = models.get_model(model_name)

    def model_fn(z):
        return clf(z, training=False)

    return clf, model_fn


def _record_attack_times(record, wall, cpu, n_images, n_batches, not_attacks=()):
    """Adds contenders' seconds per batch, rounds and images/s to `record` (merging).

    Returns `({name: median seconds per round}, {name: images/s})`.
    """
    sec = {name: statistics.median(t) for name, t in wall.items()}
    record.setdefault("attack_s_per_batch", {}).update(
        {n: round(v / n_batches, 5) for n, v in sec.items()}
    )
    record.setdefault("attack_cpu_s_per_batch", {}).update(
        {n: round(statistics.median(t) / n_batches, 5) for n, t in cpu.items()}
    )
    record.setdefault("attack_rounds_s", {}).update(_rounded(wall))
    ips = {n: n_images / v for n, v in sec.items() if not n.startswith(not_attacks)}
    record.setdefault("images_per_s", {}).update({n: round(v, 1) for n, v in ips.items()})
    return sec, ips


def _record_validity(record, model_name, checks):
    """Adds the contenders' validity checks to `record`; raises if one is not a valid attack."""
    record.setdefault("validity", {}).update(checks)
    bad = [n for n, v in checks.items() if not (v["in_eps_ball"] and v["in_box"])]
    if bad:
        raise AssertionError(f"{model_name}: invalid adversarials from {bad}: {checks}")


def bench_attacks(model_name, test_arrays, cfg, record, figures, peers):
    """PGD against its floor, and attack throughput against ART, eager CleverHans and Foolbox.

    Times, side by side, the contenders of the `ATTACK_FIGURES` among
    `figures` whose peer library (`peers`, name -> module or None) is installed;
    a figure whose peer is missing is recorded as None.
    """
    clf, model_fn = _attack_model(model_name, cfg)
    k, eps, bs = cfg["pgd_steps"], cfg["eps"], cfg["batch_size"]
    step = 2.5 * eps / k  # at2l_tf's default PGD step, given to every contender explicitly.
    batches = benchlib.batches(*test_arrays, cfg["attack_batches"], bs)
    n_images = sum(len(b[1]) for b in batches)
    x_all = np.concatenate([b[0] for b in batches])
    y_all = np.concatenate([b[1] for b in batches])

    wanted = [f for f in ATTACK_FIGURES if f in figures]
    timed = [f for f in wanted if f not in PEERS or peers[PEERS[f]] is not None]
    for f in wanted:
        if f not in timed:
            record[f] = None  # Its peer is not installed.
    if not timed:
        return

    def compiled(attack_fn, jit_compile=False):
        # As evaluation._compiled does: one graph per batch shape.
        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def run(x, y):
            return attack_fn(model_fn, x, y)

        return run

    def input_grad(jit_compile=False):
        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))
                )
            return tape.gradient(loss, x)

        return grad

    def ours(run):
        # NumPy batches in, NumPy adversarials out, as ART's generate.
        return lambda: np.concatenate([run(x, y).numpy() for x, y in batches])

    def k_grads(grad):
        # The floor of PGD-k: k input gradients per batch, one call each.
        def go():
            for x, y in batches:
                x = tf.constant(x)
                for _ in range(k):
                    g = grad(x, y).numpy()
            return g

        return go

    def update_ops():
        # PGD-k minus its gradients: k sign steps and projections, one graph.
        g = tf.random.stateless_normal((bs, *clf.input_shape[1:]), seed=(cfg["seed"], 1))

        @tf.function(reduce_retracing=True)
        def run(x):
            x_adv = x
            for _ in range(k):
                x_adv = tf.clip_by_value(x_adv + step * tf.sign(g), 0.0, 1.0)
                x_adv = tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), 0.0, 1.0)
            return x_adv

        return lambda: np.concatenate([run(x).numpy() for x, _ in batches])

    def cleverhans_eager():
        # The CleverHans tutorial's loop, with our PGD's box, labels and random start.
        return lambda: np.concatenate(
            [benchlib.cleverhans_eager_pgd(clf, x, y, eps, step, k) for x, y in batches]
        )

    def art_attack(index):
        # ART's generate takes all images and batches them itself (batch_size = ours).
        attack = benchlib.art_attacks(peers["art"], clf, eps, step, k, bs)[index]
        return lambda: attack.generate(x_all, y_all)

    def foolbox():
        # Foolbox has no batching of its own: one call per batch, as ours.
        run = benchlib.foolbox_pgd(peers["foolbox"], clf, eps, step, k)
        return lambda: np.concatenate([run(x, y) for x, y in batches])

    pgd_fn = attacks.make_attack("pgd", eps=eps, steps=k, step_size=step)
    builders = {  # In this order in the rounds (rotated each round).
        "ours_fgsm": lambda: ours(compiled(attacks.make_attack("fgsm", eps=eps))),
        "ours_pgd": lambda: ours(compiled(pgd_fn)),
        "input_grad_x_k": lambda: k_grads(input_grad()),
        "pgd_update_ops_x_k": update_ops,
        "cleverhans_eager_pgd": cleverhans_eager,
        "art_fgsm": lambda: art_attack(0),
        "art_pgd": lambda: art_attack(1),
        "foolbox_pgd": foolbox,
        "ours_pgd_xla": lambda: ours(compiled(pgd_fn, jit_compile=True)),
        "input_grad_x_k_xla": lambda: k_grads(input_grad(jit_compile=True)),
    }
    needed = {c for f in timed for c in ATTACK_FIGURES[f]}
    xla = cfg["xla"] and "pgd_efficiency" in timed
    if xla:
        needed |= {"ours_pgd_xla", "input_grad_x_k_xla"}
    contenders = {name: build() for name, build in builders.items() if name in needed}

    with benchlib.Section(f"{model_name}: attacks") as s:
        wall, cpu, outputs = benchlib.interleaved(contenders, repeats=cfg["repeats"], warmup=cfg["warmup"])
    record["sections"]["attacks"] = s.record
    not_attacks = ("input_grad", "pgd_update_ops")
    per_batch = len(batches)
    sec, ips = _record_attack_times(record, wall, cpu, n_images, per_batch, not_attacks)
    if "pgd_efficiency" in timed:
        record["pgd_efficiency"] = round(sec["ours_pgd"] / sec["input_grad_x_k"], 3)
        record["pgd_efficiency_cpu"] = round(
            statistics.median(cpu["ours_pgd"]) / statistics.median(cpu["input_grad_x_k"]), 3
        )
        record["pgd_breakdown"] = {
            "k": k,
            "input_grads_s_per_batch": round(sec["input_grad_x_k"] / per_batch, 5),
            "update_ops_s_per_batch": round(sec["pgd_update_ops_x_k"] / per_batch, 5),
            "rest_s_per_batch": round(
                (sec["ours_pgd"] - sec["input_grad_x_k"] - sec["pgd_update_ops_x_k"]) / per_batch,
                5,
            ),
        }
        if "cleverhans_eager_pgd" in sec:
            # What eager execution adds to each PGD step over our one graph.
            record["pgd_breakdown"]["cleverhans_eager_overhead_s_per_step"] = round(
                (sec["cleverhans_eager_pgd"] - sec["ours_pgd"]) / (per_batch * k), 5
            )
    for figure, (mine, theirs) in (
        ("pgd_vs_cleverhans_eager", ("ours_pgd", "cleverhans_eager_pgd")),
        ("fgsm_vs_art", ("ours_fgsm", "art_fgsm")),
        ("pgd_vs_art", ("ours_pgd", "art_pgd")),
        ("pgd_vs_foolbox", ("ours_pgd", "foolbox_pgd")),
    ):
        if figure in timed:
            record[figure] = round(ips[mine] / ips[theirs], 3)
    if "pgd_vs_foolbox" in timed:  # Cross-check: CPU time, all threads.
        record["pgd_vs_foolbox_cpu"] = round(
            statistics.median(cpu["foolbox_pgd"]) / statistics.median(cpu["ours_pgd"]), 3
        )
    if xla:
        record["xla"].update(
            pgd_efficiency=round(sec["ours_pgd_xla"] / sec["input_grad_x_k_xla"], 3),
            pgd_speedup=round(sec["ours_pgd"] / sec["ours_pgd_xla"], 3),
            input_grad_speedup=round(sec["input_grad_x_k"] / sec["input_grad_x_k_xla"], 3),
        )

    # Every contender made valid adversarials of the same budget (last timed call).
    _record_validity(record, model_name, {
        name: _linf_check(x_all, out, y_all, clf, eps)
        for name, out in outputs.items()
        if not name.startswith(not_attacks)
    })


def bench_apgd(model_name, test_arrays, cfg, record, art):
    """`apgd_vs_art`: our APGD-CE over ART's AutoProjectedGradientDescent, images/s.

    One batch (the first of `bench_attacks`' batches), the same untrained model;
    `--apgd_steps` iterations, one random start, eps `--eps`, initial step
    2 eps, seed `--seed` (ours; ART draws from NumPy's global generator).

    Ours is a Python loop over one compiled APGD iteration (`attacks.apgd`): a
    `tf.while_loop` around the model's gradient used to run, per trace and at
    random, at the speed of unrolled PGD steps or up to ~1.7x slower with oneDNN
    (the figures in `speed_attacks_cpu.json` were measured with that loop).
    Compare `attack_s_per_batch` of `ours_apgd` / 100 with `ours_pgd` / 10.
    """
    if art is None:
        record["apgd_vs_art"] = None
        return
    clf, model_fn = _attack_model(model_name, cfg)
    n, eps, bs = cfg["apgd_steps"], cfg["eps"], cfg["batch_size"]
    ((x, y_true),) = benchlib.batches(*test_arrays, 1, bs)
    # Labels: the model's own predictions, given to both. Both APGDs leave alone
    # the examples misclassified at the start of a run (ours: `fooled` from the
    # clean logits, then only the rest is gathered and attacked; ART: only its
    # `sample_is_robust` are attacked), and neither stops within a run (ours: a
    # fixed number of iterations; ART: only once every example's loss is
    # exactly 0, which cross-entropy does not reach here); with one restart there
    # is no later run. With its predictions as labels, every one of the 128 images
    # is attacked for all `n` iterations on both sides. With the true labels the
    # untrained model is right on ~10% of the batch: both would attack ~13
    # images, and the ratio would measure per-call overhead instead.
    labels = np.argmax(clf(x, training=False).numpy(), axis=-1).astype(np.int64)
    art_apgd = benchlib.art_apgd(art, clf, eps, n, bs)
    contenders = {
        # Called eagerly, as evaluate calls it (the registry does not compile APGD):
        # a Python loop over one compiled iteration.
        "ours_apgd": lambda: attacks.apgd_ce(
            model_fn, x, labels, eps=eps, steps=n, restarts=1, seed=cfg["seed"]
        ).numpy(),
        "art_apgd": lambda: art_apgd.generate(x, labels),
    }
    with benchlib.Section(f"{model_name}: APGD-CE ({n} iterations)") as s:
        wall, cpu, outputs = benchlib.interleaved(
            contenders, repeats=cfg["repeats"], warmup=cfg["warmup"]
        )
    record["sections"]["attacks_apgd"] = s.record
    _, ips = _record_attack_times(record, wall, cpu, len(labels), 1)
    record["apgd_vs_art"] = round(ips["ours_apgd"] / ips["art_apgd"], 3)
    record["apgd_vs_art_cpu"] = round(
        statistics.median(cpu["art_apgd"]) / statistics.median(cpu["ours_apgd"]), 3
    )
    record["apgd_labels"] = {
        "labels": "the model's predictions on the clean batch",
        "attacked": int(len(labels)),
        "clean_accuracy_true_labels": round(float(np.mean(labels == y_true)), 4),
    }
    _record_validity(record, model_name, {
        name: _linf_check(x, out, labels, clf, eps) for name, out in outputs.items()
    })


if __name__ == "__main__":
    benchlib.speed_main("speed_attacks", [sys.modules[__name__]])
