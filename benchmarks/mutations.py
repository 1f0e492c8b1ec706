r"""Mutation check of the test suite: break the method on purpose, see a test fail.

    python benchmarks/mutations.py --output_json=benchmarks/results/mutations.json
    python benchmarks/mutations.py --only=negatives_from_clean_logits,pgd_one_step_less
    python benchmarks/mutations.py --check     # every mutation still applies; nothing is run

Each mutation replaces one exact piece of the package's source (the replaced text must
occur exactly once in its file, or the mutation is stale), runs the tests meant to catch
it, and restores the file, whatever happens. A mutation is *caught* when a test fails
(pytest exits 1; a collection error is not a catch). The JSON records, per mutation, the
file, the tests run, whether it was caught, and the seconds taken.

Run it on a clean tree: files are restored from memory, but a crash of the interpreter
itself (kill -9) would leave a mutant behind (`git diff` shows it).
"""

import dataclasses
import os
import subprocess
import sys
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from at2l_tf import cli  # noqa: E402
import provenance  # noqa: E402  # benchmarks/: this script's directory is on sys.path.
from at2l_tf.errors import ConfigError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple


def M(name, what, path, old, new, *tests):
    return Mutation(name, what, path, old, new, tests)


AT2L, OBJECTIVES = "tests/training/test_at2l_model.py::", "tests/training/test_objectives.py::"
STRENGTH, OBJECTIVE_FLAGS = "tests/attacks/test_attack_strength.py::", "tests/test_objective_flags.py::"
TRAIN, SPEED = "tests/test_train.py::", "tests/test_speed_benchmark.py::"
MUTATIONS = (
    M("negatives_from_clean_logits", "negatives picked by the class the *clean* logits point to", "at2l_tf/losses.py",
      "index, valid = select_negatives(labels, adv_logits, num_classes=num_classes, seed=seed)",
      "index, valid = select_negatives(labels, clean_logits, num_classes=num_classes, seed=seed)",
      AT2L + "test_ten_class_negatives_are_the_class_the_adversarial_is_pushed_to",
      AT2L + "test_triplet_regularizer_layer_uses_the_adversarial_logits_to_pick_negatives"),
    M("attack_in_training_mode", "x_adv crafted with the classifier in training mode (dropout on, batch norm updating)",
      "at2l_tf/training/at2l_model.py",
      "tf.cast(self._attack_target(z, training=False), tf.float32)",
      "tf.cast(self._attack_target(z, training=True), tf.float32)",
      AT2L + "test_attacks_in_the_step_see_the_classifier_in_inference_mode"),
    M("attack_returns_x", "the in-step attack returns the clean batch", "at2l_tf/training/at2l_model.py",
      "return tf.stop_gradient(attack_fn(model_fn, x, y))",
      "return tf.stop_gradient(x + 0.0 * attack_fn(model_fn, x, y))",
      AT2L + "test_every_training_attack_runs_inside_the_compiled_step"),
    M("pgd_one_step_less", "iterative attacks run one step fewer than asked", "at2l_tf/attacks/iterative.py",
      "    for _ in range(steps):\n", "    for _ in range(max(steps - 1, 1)):\n",
      STRENGTH + "test_each_requested_step_is_one_gradient"),
    M("pgd_capped_at_one_step", "iterative attacks capped at one step (FGSM-like strength)",
      "at2l_tf/attacks/iterative.py",
      "    for _ in range(steps):\n", "    for _ in range(1):\n",
      STRENGTH + "test_iterative_attacks_beat_fgsm_on_an_undefended_model"),
    M("default_step_eps_over_steps", "default step eps/steps instead of the documented 2.5*eps/steps",
      "at2l_tf/attacks/iterative.py",
      "return 2.5 * eps / steps if step_size is None else step_size",
      "return eps / steps if step_size is None else step_size",
      STRENGTH + "test_iterative_default_step_is_two_and_a_half_eps_over_steps",
      STRENGTH + "test_pgd_default_step_through_the_registry"),
    M("apgd_one_step_less", "APGD runs one iteration fewer than asked", "at2l_tf/attacks/apgd.py",
      "    for _ in range(params[\"steps\"]):\n", "    for _ in range(params[\"steps\"] - 1):\n",
      STRENGTH + "test_each_requested_step_is_one_gradient"),
    M("registry_drops_unknown_params", "make_attack silently drops parameters the attack does not take",
      "at2l_tf/attacks/registry.py",
      "    if unknown:\n        raise ConfigError(",
      "    params = {k: v for k, v in params.items() if k in accepted}\n    if False:\n        raise ConfigError(",
      "tests/attacks/test_registry.py::test_make_attack_rejects_parameters_the_attack_does_not_take",
      AT2L + "test_bad_attack_parameters_are_rejected_with_the_accepted_names"),
    M("lambda1_lambda2_swapped", "the train command passes λ1 as λ2 and λ2 as λ1", "at2l_tf/experiment.py",
      "lambda1=config.train.lambda1,\n            lambda2=config.train.lambda2,",
      "lambda1=config.train.lambda2,\n            lambda2=config.train.lambda1,",
      TRAIN + "test_every_objective_and_attack_flag_reaches_the_model"),
    M("margin_dropped", "the train command leaves the margin at its default", "at2l_tf/experiment.py",
      "            margin=config.train.margin,\n", "",
      TRAIN + "test_every_objective_and_attack_flag_reaches_the_model"),
    M("eps_dropped", "the train command leaves eps to the attack's default (None)", "at2l_tf/experiment.py",
      "params[\"eps\"] = config.eps", "params.pop(\"eps\")",
      TRAIN + "test_every_objective_and_attack_flag_reaches_the_model"),
    M("tr_with_adversarial_ce", "the tr objective also adds the adversarial cross-entropy (Eq. 1 + triplet)",
      "at2l_tf/training/objectives.py",
      "\"tr\": (\"none\", True),", "\"tr\": (\"at\", True),",
      AT2L + "test_tr_objective_is_clean_ce_plus_triplet_without_adversarial_ce"),
    M("get_config_drops_norm_and_seed", "get_config forgets the triplet distance and seed",
      "at2l_tf/training/at2l_model.py",
      "            \"triplet_distance\": self.triplet.distance,\n            \"seed\": self.seed,\n", "",
      AT2L + "test_get_config_round_trips"),
    M("get_config_drops_lambda1", "get_config forgets λ1", "at2l_tf/training/at2l_model.py",
      "            \"lambda1\": self.lambda1,\n", "", AT2L + "test_get_config_round_trips"),
    M("extra_forward_for_negatives", "AT²L runs an extra forward pass for the negatives",
      "at2l_tf/training/at2l_model.py",
      "out[\"hinge\"] = self.triplet(y, features, adv_features, global_k, adv_logits=adv_logits)",
      "out[\"hinge\"] = self.triplet(y, self._forward(x, training)[1], adv_features, global_k, adv_logits=adv_logits)",
      AT2L + "test_forward_passes_per_step_no_extra_one_for_the_negatives"),
    M("absl_flag_errors_not_caught", "flag-parsing errors left to absl (two lines, FATAL ...)", "at2l_tf/cli.py",
      "app.run(_guarded, flags_parser=_parse)", "app.run(_guarded)",
      TRAIN + "test_a_flag_absl_rejects_is_a_one_line_error_of_the_command"),
    M("corrupt_keras_file_unchecked", "a corrupt .keras file goes straight to Keras", "at2l_tf/savedmodel.py",
      "    if not zipfile.is_zipfile(path):\n", "    if False:\n",
      "tests/test_evaluate.py::test_a_corrupt_keras_file_exits_1_with_one_line"),
    M("keras_load_errors_unwrapped", "Keras' own load errors reach the user as a traceback", "at2l_tf/savedmodel.py",
      "    except Exception as e:  # Keras raises many types for a damaged archive.",
      "    except ZeroDivisionError as e:",
      "tests/test_evaluate.py::test_unreadable_model_files_are_one_line_errors"),
    M("mnist_train_overlaps_validation", "the train split drops the first images instead of the validation ones",
      "at2l_tf/data.py",
      "        return images[:cut], labels[:cut]", "        return images[60000 - cut:], labels[60000 - cut:]",
      "tests/test_data.py::test_mnist_validation_is_the_end_of_train_and_disjoint"),
    M("export_writes_in_place", "the export writes straight into <root>/<version> (removed again on failure)",
      "at2l_tf/savedmodel.py",
      "tmp = tempfile.mkdtemp(prefix=f\".tmp-{version}-\", dir=export_dir)", "tmp = final; os.makedirs(tmp)",
      "tests/test_savedmodel.py::test_interrupted_export_leaves_no_version"),
    M("readme_test_command_with_extra_args", "the README's test command skips tests that CI runs", "README.md",
      ".venv/bin/python -m pytest tests -q\n", ".venv/bin/python -m pytest tests -q -k 'not slow'\n",
      "tests/test_readme.py::test_ci_runs_the_readme_test_command_verbatim"),
    M("extra_forward_per_pgd_step", "PGD makes an extra (gradient-free) forward pass per step",
      "at2l_tf/attacks/iterative.py",
      "        adv_x = fast_gradient_method(\n            model_fn, adv_x,",
      "        adv_x = fast_gradient_method(\n"
      "            lambda z: model_fn(z) + 0.0 * tf.stop_gradient(model_fn(z)), adv_x,",
      STRENGTH + "test_each_requested_step_is_one_gradient",
      SPEED + "test_quick_speed_benchmark_writes_the_documented_json"),
    M("at2l_attacks_twice", "the AT²L step runs its attack twice", "at2l_tf/training/at2l_model.py",
      "                x_adv = self.generate_adversarial(x, y, training=training)\n",
      "                x_adv = self.generate_adversarial(x, y, training=training)\n"
      "                if self.uses_triplet:\n"
      "                    x_adv = self.generate_adversarial(x_adv, y, training=training)\n",
      SPEED + "test_quick_speed_benchmark_writes_the_documented_json"),
    M("train_step_run_eagerly", "the model runs its train step eagerly (the Python body every step)",
      "at2l_tf/training/at2l_model.py",
      "    def train_step(self, data):\n",
      "    def compile(self, *args, **kwargs):\n        super().compile(*args, run_eagerly=True, **kwargs)\n\n"
      "    def train_step(self, data):\n",
      AT2L + "test_forward_passes_per_step_no_extra_one_for_the_negatives"),
    M("kl_direction_swapped", "TRADES' and MART's KL computed as KL(p(x') || p(x)) instead of KL(p(x) || p(x'))",
      "at2l_tf/losses.py",
      "return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)",
      "return tf.reduce_sum(tf.exp(log_q) * (log_q - log_p), axis=-1)",
      OBJECTIVES + "test_trades_loss_is_ce_plus_beta_kl_of_clean_to_adversarial_by_hand",
      OBJECTIVES + "test_mart_loss_is_bce_plus_weighted_kl_by_hand"),
    M("mart_without_misclassification_weight", "MART's KL term without its (1 - p_y(x)) weight",
      "at2l_tf/training/objectives.py",
      "self.beta * kl * (1.0 - p_true)", "self.beta * kl",
      OBJECTIVES + "test_mart_loss_is_bce_plus_weighted_kl_by_hand"),
    M("mart_plain_cross_entropy", "MART's boosted CE replaced by the plain CE on x'",
      "at2l_tf/training/objectives.py",
      "return losses.boosted_cross_entropy(y, adv_logits) + ", "return losses.cross_entropy(y, adv_logits) + ",
      OBJECTIVES + "test_mart_loss_is_bce_plus_weighted_kl_by_hand"),
    M("trades_attack_on_cross_entropy", "TRADES' inner attack ascends the CE of the predicted class instead of the KL",
      "at2l_tf/attacks/trades.py",
      "kl = tf.reduce_sum(losses.kl_divergence(clean_logits, model_fn(x_adv)))",
      "kl = tf.reduce_sum(losses.cross_entropy(tf.argmax(clean_logits, -1), model_fn(x_adv)))",
      "tests/attacks/test_trades_kl.py::test_the_kl_attack_maximizes_the_kl_not_the_cross_entropy"),
    M("trades_attack_starts_at_x", "TRADES' inner attack starts at x instead of x + 0.001 N(0, 1)",
      "at2l_tf/attacks/trades.py",
      "start = _common.gaussian_start(x, sigma, seed)", "start = x",
      "tests/attacks/test_trades_kl.py::test_it_moves_from_the_point_where_the_kl_gradient_is_zero"),
    M("trades_uses_the_configured_attack",
      "--objective=trades crafts x' with the configured CE attack instead of its KL attack",
      "at2l_tf/training/objectives.py",
      "        return \"trades_kl\"\n", "        return configured\n",
      OBJECTIVES + "test_trades_picks_its_kl_attack_and_the_others_the_configured_one",
      OBJECTIVE_FLAGS + "test_trades_takes_its_kl_attack_with_the_attack_flags"),
    M("hardest_negative_is_the_farthest", "the hardest negative is the farthest other-class example, not the closest",
      "at2l_tf/losses.py",
      "index = tf.argmin(dist, axis=1, output_type=tf.int32)",
      "index = tf.argmax(tf.where(different, dist, -dist), axis=1, output_type=tf.int32)",
      "tests/test_losses.py::test_hardest_negative_is_the_nearest_clean_example_of_another_class"),
    M("cosine_without_normalization", "the cosine distance on unnormalized features (1 - a.b)", "at2l_tf/losses.py",
      "    return tf.math.l2_normalize(v, axis=-1, epsilon=1e-12)", "    return v",
      "tests/test_losses.py::test_cosine_distance_is_one_minus_cos_and_blind_to_feature_scale"),
    M("embedding_is_the_logits", "the embedding features are the logits", "at2l_tf/training/embedding.py",
      "return keras.Model(inputs, [outputs[0], embedding], name=f\"{net.name}_with_embedding\")",
      "return keras.Model(inputs, [outputs[0], outputs[0]], name=f\"{net.name}_with_embedding\")",
      OBJECTIVES + "test_embedding_features_are_the_penultimate_layers_output"),
    M("embedding_not_used_by_the_model", "triplet_features=embedding leaves the triplet on the logits",
      "at2l_tf/training/at2l_model.py",
      "self._forward_fn = _untracked_call(embedding.with_embedding(classifier))",
      "embedding.with_embedding(classifier)",
      OBJECTIVES + "test_the_model_puts_the_triplet_on_the_embedding_when_asked"),
    M("beta_dropped", "the train command leaves β at its default", "at2l_tf/experiment.py",
      "            beta=config.train.beta,\n", "", OBJECTIVE_FLAGS + "test_every_new_flag_reaches_the_built_model"),
    M("triplet_negative_dropped", "the train command leaves the triplet negative at its default",
      "at2l_tf/experiment.py",
      "            triplet_negative=config.train.triplet_negative,\n", "",
      OBJECTIVE_FLAGS + "test_every_new_flag_reaches_the_built_model"),
    M("at_adds_the_triplet_by_default",
      "--objective=at adds the paper's triplet term when --lambda2 is not given (old flagfiles change meaning)",
      "at2l_tf/training/objectives.py",
      "\"at\": (\"at\", False),", "\"at\": (\"at\", True),",
      OBJECTIVE_FLAGS + "test_every_shipped_flagfile_keeps_its_meaning"),
    M("tuner_trial_takes_unused_values", "a tuner trial takes every drawn value, λ2 on an `at` trial included",
      "at2l_tf/tune/hypermodel.py",
      "own = {k: v for k, v in values.items() if k in used}",
      "own = {k: v for k, v in values.items() if not k.startswith(\"tuner/\")}",
      "tests/test_tune.py::test_the_space_can_cover_the_objective_beta_and_the_triplet_design"),
    M("results_without_training_record", "results.json does not say which objective and triplet trained the model",
      "at2l_tf/experiment.py",
      "        \"training\": config.train.describe(),\n", "",
      OBJECTIVE_FLAGS + "test_results_json_records_the_objective_and_the_triplet"),
)

FLAGS = flags.FLAGS
flags.DEFINE_list("only", None, "Mutations to run (default: all).")
flags.DEFINE_bool("check", False, "Only check that every mutation applies and its tests exist; run nothing.")
flags.DEFINE_string("output_json", None, "Where to write the results (atomically).")


def source(mutation):
    """`(path, text)` of the file `mutation` changes; raises if its text is not there exactly once
    or a test it runs is not in its file."""
    path = os.path.join(REPO, mutation.path)
    with open(path) as f:
        original = f.read()
    count = original.count(mutation.old)
    if count != 1:
        raise ConfigError(f"mutation {mutation.name!r} is stale: its text occurs {count} times in {mutation.path}")
    for test in mutation.tests:
        file, _, name = test.partition("::")
        with open(os.path.join(REPO, file)) as f:
            if f"def {name}(" not in f.read():
                raise ConfigError(f"mutation {mutation.name!r} runs {test}, which does not exist")
    return path, original


def run_one(mutation):
    path, original = source(mutation)
    with open(path, "w") as f:
        f.write(original.replace(mutation.old, mutation.new))
    start = time.time()
    try:
        # PYTHONPATH: scripts the tests start (benchmarks/speed.py) must import
        # this tree's mutant, not another checkout installed in editable mode.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
                              cwd=REPO, capture_output=True, text=True, env=env)
    finally:
        with open(path, "w") as f:
            f.write(original)
    return {
        "what": mutation.what, "file": mutation.path, "tests": list(mutation.tests),
        # pytest exits 1 when tests failed; 2-4 (collection error, interrupt, usage) say the
        # mutant broke something else, which is not a catch.
        "caught": proc.returncode == 1,
        "pytest_summary": (proc.stdout.strip().splitlines() or [""])[-1],
        "seconds": round(time.time() - start, 1),
    }


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    known = {m.name: m for m in MUTATIONS}
    names = FLAGS.only or list(known)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown mutation {name!r}; known: {', '.join(known)}")
    for name in names:  # Every mutation must still apply before any is run.
        source(known[name])
    if FLAGS.check:
        print(f"{len(names)} mutations apply")
        return 0
    started, results = time.time(), {}
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        r = results[name] = run_one(known[name])
        print(f"    {'caught' if r['caught'] else 'NOT CAUGHT'}: {r['pytest_summary']} ({r['seconds']} s)",
              file=sys.stderr, flush=True)
    missed = [n for n, r in results.items() if not r["caught"]]
    provenance.write(FLAGS.output_json, {"benchmark": "mutations", "caught": len(results) - len(missed),
                                         "total": len(results), "missed": missed, "mutations": results},
                     "mutations.py", started)
    print(f"{len(results) - len(missed)}/{len(results)} mutations caught"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    cli.run(main, "mutations")
