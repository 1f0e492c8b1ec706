r"""AT vs TRADES vs MART, each without a triplet term, with the paper's and with a TLA-style one.

    python benchmarks/compare_objectives.py --flagfile=flags/mnist_triplet_study.flags --epochs=2 \
        --output_json=benchmarks/results/compare_objectives_mnist.json
    python benchmarks/compare_objectives.py --markdown_from=benchmarks/results/compare_objectives_mnist.json

Every variant is the train command's recipe (the flags given) with only the
objective and its triplet term changed, so each gets the same model, data
order, initial weights, training-attack budget (`--attack_steps`; TRADES' KL
attack and MART's PGD take the same eps and steps), epochs and seed:

* objectives (`--objectives`): `at` (Eq. 1, λ1 = 1), `trades` (β = 1, its MNIST
  value), `mart` (β = 6, its published value);
* triplets (`--triplets`): `none`; `paper` (logits, L∞, a random negative of the
  class the adversarial example is pushed to, λ2 = 0.5, α = 0.5: AT²L's Eq. 2);
  `tla` (penultimate-layer features, cosine distance, the hardest in-batch
  negative, λ2 = 0.5, α = 0.05: Mao et al.'s MNIST setting).

Each model is judged by the run's final check on the first `--eval_examples`
test images: clean, FGSM, PGD-40 and AutoAttack `fast`, worst case per example
(`robust`). One seed and a reduced budget: enough to choose a recipe, not to
answer whether a triplet term helps (`benchmarks/triplet_study.py` does that).
A finished run (same configuration in its workdir) is reused.
"""

import dataclasses
import os
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf import train as train_command  # noqa: E402  (defines every train flag)
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("objectives", ["at", "trades", "mart"], "Objectives compared.")
flags.DEFINE_list("triplets", ["none", "paper", "tla"], "Triplet terms on each objective.")
flags.DEFINE_string("output_json", None, "Where to write the comparison (atomically, after every run).")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")

OBJECTIVES = {"at": {"defense": "at"}, "trades": {"defense": "trades"}, "mart": {"defense": "mart"}}
TRIPLETS = {
    "none": {"lambda2": None},
    "paper": {"lambda2": 0.5, "margin": 0.5, "triplet_features": "logits", "norm": "linf",
              "triplet_negative": "random"},
    "tla": {"lambda2": 0.5, "margin": 0.05, "triplet_features": "embedding", "norm": "cosine",
            "triplet_negative": "hardest"},
}
LABELS = {"at": "AT", "trades": "TRADES", "mart": "MART", "none": "–", "paper": "paper (AT²L)",
          "tla": "TLA-style"}


def run_config(objective, triplet):
    cfg = train_command.config_from_flags()
    cfg.train = dataclasses.replace(cfg.train, **OBJECTIVES[objective], **TRIPLETS[triplet])
    cfg.workdir = os.path.join(FLAGS.workdir or "runs/compare_objectives", f"{objective}_{triplet}")
    cfg.export_dir = None
    return cfg.validate()


def markdown(record):
    rows = []
    for r in record["runs"]:
        a = r["accuracy"]
        rows.append([LABELS[r["objective"]], LABELS[r["triplet"]], f"{100 * r['clean_accuracy']:.1f}%",
                     f"{100 * a['pgd']:.1f}%", f"{100 * a['autoattack']:.1f}%",
                     f"**{100 * r['robust_accuracy']:.1f}%**", f"{r['train_seconds'] / 60:.1f}"])
    return "\n".join(benchlib.markdown_table(
        ["objective", "triplet term", "clean", "PGD-40", "AutoAttack fast", "**robust**", "train min"], rows))


def main(argv):
    if benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    for name, known in ((FLAGS.objectives, OBJECTIVES), (FLAGS.triplets, TRIPLETS)):
        bad = [n for n in name if n not in known]
        if bad:
            raise ConfigError(f"unknown choice {bad[0]!r}; known: {', '.join(known)}")
    plan = [(o, t) for o in FLAGS.objectives for t in FLAGS.triplets]
    configs = {key: run_config(*key) for key in plan}  # All checked before any training.
    started = time.time()
    runs = []
    for i, key in enumerate(plan, 1):
        print(f"=== run {i}/{len(plan)}: {key[0]} + {key[1]} ===", file=sys.stderr, flush=True)
        res = benchlib.train(configs[key])
        runs.append({"objective": key[0], "triplet": key[1], **benchlib.accuracies(res["test"]),
                     "training": res.get("training"), "train_seconds": res["train_seconds"],
                     "precision": (res.get("precision") or {}).get("policy")})
        if FLAGS.output_json:
            c = configs[key]
            atomic_write_json(FLAGS.output_json, {
                "benchmark": "compare_objectives", "complete": i == len(plan),
                "budget": {"model": c.model_name, "epochs": c.train.epochs, "seed": c.train.seed,
                           "max_train_examples": c.data.max_train_examples, "eps": c.eps,
                           "training_attack_steps": c.attack.steps, "eval_examples": c.eval.num_examples,
                           "eval_attacks": list(c.eval.attacks),
                           "robust": "per example, worst case over the eval attacks"},
                "runs": runs, **benchlib.provenance("compare_objectives.py", started),
            })
    print(markdown({"runs": runs}))


if __name__ == "__main__":
    cli.run(main, "compare_objectives")
