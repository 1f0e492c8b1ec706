r"""What Defense-GAN's projection costs and how close it gets, by L (steps) and R (restarts).

    python benchmarks/defense_gan_projection.py --generator=savedmodels/mnist_generator \
        --output_json=benchmarks/results/defense_gan_projection_mnist.json

Per `LxR` of `--settings`, the first `--num_examples` MNIST test images projected by
`DefenseGANProjection` (seed `--seed`) in batches of `--batch_size`, after one untimed
warm-up batch: seconds per image, and the per-pixel mean squared error `||G(z*) − x||²/n`
(the projection's objective) and the L2 distance `||G(z*) − x||_2`, mean over the images,
beside the best random start's. The settings run interleaved in one process, so their
ratios compare. The table: benchmarks/README.md, "Defense-GAN's generator".
"""

import os
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import provenance  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from at2l_tf.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("generator", "savedmodels/mnist_generator", "A .keras generator, or a directory with one.")
flags.DEFINE_list("settings", ["25x2", "50x4", "100x5", "200x10"], "LxR pairs to measure (200x10: the paper's).")
flags.DEFINE_integer("num_examples", 100, "First N MNIST test images.")
flags.DEFINE_integer("batch_size", 50, "Images per projection call.")
flags.DEFINE_integer("seed", 0, "Seed of the random starts.")
flags.DEFINE_string("output_json", "benchmarks/results/defense_gan_projection_mnist.json", "Where the results go.")


def parse_settings(values):
    """`["25x2", ...]` → `[(25, 2), ...]`; raises `ConfigError` on a bad entry."""
    out = []
    for value in values:
        try:
            steps, restarts = (int(p) for p in value.lower().split("x"))
        except ValueError:
            raise ConfigError(f"settings must be LxR pairs like 50x4, received {value!r}") from None
        if steps < 1 or restarts < 1:
            raise ConfigError(f"L and R must be >= 1, received {value!r}")
        out.append((steps, restarts))
    return out


def measure(generator, settings, num_examples, batch_size, seed):
    import numpy as np

    from at2l_tf import data
    from at2l_tf.defenses.defense_gan import DefenseGANProjection

    images, _ = data.load_mnist_arrays("test")
    x = images[:num_examples].astype("float32") / 255.0
    rows = []
    for steps, restarts in settings:
        layer = DefenseGANProjection(generator, steps=steps, restarts=restarts, seed=seed)
        pixels = int(np.prod(layer.image_shape))
        layer.search(x[:batch_size], with_initial=True)  # Warm-up: traces the graph.
        errors, starts, seconds = [], [], 0.0
        for i in range(0, len(x), batch_size):
            started = time.perf_counter()
            found = layer.search(x[i:i + batch_size], with_initial=True)
            err = np.asarray(found["errors"])
            seconds += time.perf_counter() - started
            errors.append(err)
            starts.append(np.asarray(found["initial_errors"]).min(axis=1))
        errors, starts = np.concatenate(errors), np.concatenate(starts)
        rows.append({"steps": steps, "restarts": restarts, "seconds_per_image": seconds / len(x),
                     "mean_squared_error": float(errors.mean()), "mean_l2": float(np.sqrt(errors * pixels).mean()),
                     "start_mean_squared_error": float(starts.mean()),
                     "start_mean_l2": float(np.sqrt(starts * pixels).mean())})
        print(f"L={steps:4d} R={restarts:3d}: {seconds / len(x):.3f} s/image, MSE {errors.mean():.4f} "
              f"(L2 {rows[-1]['mean_l2']:.3f}); best random start MSE {starts.mean():.4f}", flush=True)
    return rows


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    settings = parse_settings(FLAGS.settings)
    if FLAGS.num_examples < 1 or FLAGS.batch_size < 1:
        raise ConfigError("num_examples and batch_size must be >= 1, received "
                          f"num_examples={FLAGS.num_examples}, batch_size={FLAGS.batch_size}")
    from at2l_tf.defenses.defense_gan import resolve_generator_path

    generator = resolve_generator_path(FLAGS.generator)
    started = time.time()
    rows = measure(FLAGS.generator, settings, FLAGS.num_examples, FLAGS.batch_size, FLAGS.seed)
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(generator)))
    provenance.write(FLAGS.output_json, {
        "generator": generator, "generator_mtime": mtime, "split": "test", "num_examples": FLAGS.num_examples,
        "batch_size": FLAGS.batch_size, "seed": FLAGS.seed, "settings": rows}, "defense_gan_projection.py", started)


if __name__ == "__main__":
    cli.run(main, "defense_gan_projection")
