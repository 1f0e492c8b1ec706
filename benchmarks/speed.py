r"""Speed of the AT²L training step and of our attacks, against IBM ART, eager CleverHans
and Foolbox: every speed family in one process and one JSON.

    python benchmarks/speed.py --output_json=benchmarks/results/speed_cpu.json  # ~20 min, 2 CPUs
    python benchmarks/speed.py --quick --output_json=/tmp/speed.json            # < 1 min
    python benchmarks/speed.py --figures=apgd_vs_art,pgd_vs_foolbox \
        --output_json=benchmarks/results/speed_attacks_cpu.json                  # ~9 min

The figures come in families, one module each, which also run alone:
`speed_training.py` (`at2l_over_at`, `train_epoch_s`, `train_run`: training
cost) and `speed_attacks.py` (`pgd_efficiency`, `fgsm_vs_art`, `pgd_vs_art`,
`pgd_vs_cleverhans_eager`, `apgd_vs_art`, `pgd_vs_foolbox`: our attacks
against their floor and their peers). Each module's docstring defines its
figures; `benchlib.speed_main` is what they share.

`--figures` (default: all) measures only the figures named; an unknown name
stops the run with a one-line error before any work, and nothing is written.

Runs on the CPU (`--device=cpu`, the default, hides any GPU), in one process, on
the same models (`--models`, default `mnist_small,madry_mnist`), the same batch
size (`--batch_size`, 128) and real MNIST (the copy shipped with the package:
training batches for the training step, test batches for the attacks). Every
figure is the median over `--repeats` (9) timed rounds after `--warmup` (2)
untimed calls. The contenders of a ratio are timed round-robin in the same
rounds (order rotated each round), so that load from other processes hits
them alike; CPU-time ratios are recorded next to the wall-time ones as a
cross-check that depends less on that load. Per model, the training family
runs first (its steps, epochs, then the train command in a child process),
then the attacks.

`--quick` (the test runs it): `mnist_small` only, 3 rounds, 1 warm-up, PGD-3
for training and attacks, APGD-10, 1 batch, epoch extrapolated, no XLA.

Top level: `machine` (platform, CPUs, CPU model, family and SIMD flags, the
oneDNN setting), `git_commit`, `load` (load averages; each
entry of `models.<name>.sections` also has the cores this process got, since
other jobs may share the machine), `versions`, `settings`, `date`, `command`,
`targets` (the measured ones: value per model and pass/fail; a target passes
when every model meets it), `peak_rss_mb` (peak resident memory of the
benchmark's own process), `skipped` (which peer libraries were missing, when
one was), `settings.figures` (the figures measured).
"""

# at2l_tf first: it sets TensorFlow's environment defaults, which TensorFlow reads
# once when it loads, so the benchmark runs TensorFlow as the train command does.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.
import speed_attacks
import speed_training

FAMILIES = [speed_training, speed_attacks]

if __name__ == "__main__":
    benchlib.speed_main("speed", FAMILIES)
