r"""Does the input pipeline keep up with training? And what does each recipe cost?

    python benchmarks/pipeline_speed.py --output_json=benchmarks/results/pipeline_speed_cpu.json
    python benchmarks/pipeline_speed.py --quick                       # < 1 min
    python benchmarks/pipeline_speed.py --nopipeline --recipe=flags/cifar10_at2l.flags,flags/cifar10_trades.flags
    python benchmarks/pipeline_speed.py --cost_lines_from=benchmarks/results/recipe_cost_cpu.json

**Pipeline** (`--pipeline`, on by default). `--images` JPEGs sized like Cats vs
Dogs (500 x 375 on average: width uniform in [375, 625], height in [280, 470];
smooth content with noise, quality 85) are written to a temporary folder of two
class subfolders and read by the train command's own pipeline
(`data.load("image_folder", ...)` of `at2l_tf.image_folder`, then shuffle,
batch and prefetch as `experiment.TrainingData.epoch`), at the first recipe's
image size and batch size. Figures, images per second:

* `scan_images_per_s`: the one-off check that decodes every file once (first load of a folder);
* `epoch_images_per_s[0]`: the first epoch, decode + resize (in parallel,
  `num_parallel_calls=AUTOTUNE`) while the uint8 cache fills: also the rate of
  every epoch of a folder too big to cache;
* `epoch_images_per_s[1:]`: later epochs, from the cache.

They are set against what one training step consumes: `batch_size / s_step` of
the first recipe's step on this CPU (`consumed_images_per_s`), and on paper on
one GPU (`gpu_images_per_s`, see below).

**Recipes** (`--recipe`, flagfiles; default `flags/cats_vs_dogs_at2l.flags`).
Each flagfile is parsed as the train command parses it (`train.config_from_flags`),
the model is built and compiled as the train command builds it
(`experiment.build_model`, same precision: `--mixed_precision=auto` resolves
per CPU), and `--steps` steps of `fit` are timed on synthetic batches of the
recipe's shape (uniform images, random labels) after `--warmup_steps` untimed
ones (tracing). `s_per_step` is the median step. Ensemble recipes (Algorithm 2)
also time each attack of A on a batch of 500 (the regeneration's batch) and
their clean pre-training step. `total_hours` = pre-training epochs x steps x
clean step + epochs x steps x step + one regeneration of the current model's
sets per `regenerate_every` epochs and one per static model (those of the
flagfile's command line too): training steps and regenerations only; validation
passes and the final robustness check come on top.

**One GPU, on paper.** The step's floating-point work is counted from the
network's Conv2D and Dense layers (2 x MACs per image for a forward pass F;
a backward pass is counted as 2F with weight gradients, F for the input
gradient of an attack step): an adversarial step with a k-step attack costs
(2k + 6) F per image (attack: k forward + input-gradient passes; training:
clean and adversarial forward and backward), a clean step 3F. `--gpu_tflops`
(default 2) is the sustained rate assumed for one GPU on networks this small:
public ResNet-20 / CIFAR-10 training rates of 5,000-10,000 images/s on one
V100-class GPU at batch 128 are 1.2-2.5 TFLOP/s of this count. `gpu_s_per_step`
= batch x FLOPs per image / that rate; `gpu_images_per_s` = batch / it.

`--cost_lines_from=JSON` prints, from a results file, the lines that open each
recipe's flagfile with its cost (a test checks the flagfiles against the stored file).

Timings depend on the machine and its load: the JSON records the CPU, the load
averages at start and end, and the command; rerun on an idle machine to compare.
"""

import json
import math
import os
import statistics
import sys
import tempfile
import time

# at2l_tf first: it sets TensorFlow's environment defaults, as for the train command.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.

import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf.errors import ConfigError
from at2l_tf.log import log
from at2l_tf import cli, train  # `train` defines the train command's flags, to parse recipes.

flags.DEFINE_bool("quick", False, "Short run (< 1 min): 160 images, 2 epochs, 2 timed steps.")
flags.DEFINE_string("output_json", None, "Where to write the results JSON.")
flags.DEFINE_list("recipe", ["flags/cats_vs_dogs_at2l.flags"],
                  "Flagfiles whose training step is timed; the first sets the pipeline's image and batch size.")
flags.DEFINE_bool("pipeline", True, "Time the image-folder pipeline on generated JPEGs.")
flags.DEFINE_integer("images", None, "Generated JPEGs (default 2,000; --quick: 160).")
flags.DEFINE_integer("pipeline_epochs", None, "Pipeline epochs timed (default 3; --quick: 2).")
flags.DEFINE_integer("steps", None, "Timed training steps per recipe (default 10; --quick: 2).")
flags.DEFINE_integer("warmup_steps", None, "Untimed steps before timing (default 2; --quick: 1).")
flags.DEFINE_float("gpu_tflops", 2.0, "Sustained TFLOP/s assumed for one GPU (module docstring).")
flags.DEFINE_string("cost_lines_from", None, "Print the cost lines that open each recipe's flagfile, "
                    "from this results JSON, and exit (nothing is measured).")
flags.DEFINE_integer("bench_seed", 0, "Seed of the generated images and synthetic batches.")
FLAGS = flags.FLAGS

# Training examples per epoch of each dataset as the train command splits it.
CATS_VS_DOGS_TRAIN = 18610  # TFDS cats_vs_dogs: 23,262 images, train[:80%].
REGENERATION_BATCH = 500  # `ensemble.craft_set`'s batch.


def train_examples(config):
    """Training examples of one epoch of `config` (`max_train_examples` caps it)."""
    d = config.data
    n = {"mnist": 60000 - d.validation_size, "cifar10": 50000 - d.validation_size,
         "cats_vs_dogs": CATS_VS_DOGS_TRAIN}.get(d.dataset)
    if n is None:
        raise ConfigError(f"no known training-set size for dataset {d.dataset!r}")
    return min(n, d.max_train_examples or n)


def forward_flops(model):
    """2 x multiply-adds of one image's forward pass through `model`'s Conv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # A network behind a defence layer.
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape  # cin is per group already.
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return int(total)


def _step_times(model, ds, steps, warmup):
    """Median and mean seconds of `fit` steps over `ds` (after `warmup` untimed steps)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append(time.perf_counter())

    model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
    clock = Clock()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
    gaps = np.diff(clock.marks)
    return float(statistics.median(gaps)), float(np.mean(gaps))


def _attack_steps(config, name=None):
    """k, the gradient steps of the step's attack (or of ensemble attack `name`)."""
    from at2l_tf import attacks

    if name is not None:
        if name == "cw":
            return config.ensemble.cw_steps
        return config.attack.steps if "steps" in attacks.get_entry(name).params else 1
    attack = config.training_attack
    if attack is None:
        return 0
    return config.attack.steps if "steps" in attacks.get_entry(attack).params else 1


def time_recipe(path, steps, warmup, gpu_flops, seed):
    """The cost of the recipe in flagfile `path` on this CPU, and on paper on one GPU."""
    import keras

    from at2l_tf import experiment
    from at2l_tf.training import ensemble
    from at2l_tf.training.at2l_model import AT2LModel

    if not os.path.isfile(path):
        raise ConfigError(f"recipe flagfile does not exist: {path}")
    FLAGS.unparse_flags()
    FLAGS(["train", f"--flagfile={path}"])
    config = train.config_from_flags().validate()
    spec, batch = config.spec, config.data.batch_size
    n_train = train_examples(config)
    steps_per_epoch = n_train // batch
    precision = experiment.resolve_precision(config)
    keras.utils.set_random_seed(seed)
    model = experiment.build_model(config, precision=precision, steps_per_epoch=steps_per_epoch)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, *spec.image_shape)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch).astype(np.int64)
    ens = config.ensemble.attacks
    batches = (x, y, np.clip(x + 0.01, 0, 1)) if ens else (x, y)  # Algorithm 2: precomputed x_adv.
    ds = tf.data.Dataset.from_tensors(batches).repeat()
    _log(f"{path}: {config.model_name}, {spec.image_shape}, batch {batch}, "
                 f"{precision.policy}: timing {steps} steps")
    median, mean = _step_times(model, ds, steps, warmup)
    f = forward_flops(model.classifier)
    k = _attack_steps(config)
    factor = 6 if ens else (2 * k + 6 if k else 3)
    out = {
        "flagfile": path,
        "command": f"python benchmarks/pipeline_speed.py --nopipeline --recipe={path}",
        "dataset": config.data.dataset,
        "model": config.model_name,
        "image_shape": list(spec.image_shape),
        "batch_size": batch,
        "precision": precision.policy,
        "objective": config.train.defense,
        "attack": config.training_attack,
        "attack_steps": k,
        "preprocessing": config.preprocessing.name,
        "train_examples": n_train,
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.train.epochs,
        "pretrain_epochs": config.train.pretrain_epochs,
        "timed_steps": steps,
        "s_per_step": round(median, 4),
        "s_per_step_mean": round(mean, 4),
        "images_per_s": round(batch / median, 1),
        "forward_gflops_per_image": round(f / 1e9, 5),
        "step_flops_factor": factor,
    }
    seconds = config.train.epochs * steps_per_epoch * median
    gpu_step = batch * factor * f / gpu_flops
    gpu_seconds = config.train.epochs * steps_per_epoch * gpu_step
    if config.train.pretrain_epochs or ens:
        clean = AT2LModel(model.classifier, defense="none", seed=seed)
        clean.compile(optimizer=keras.optimizers.Adam(1e-3))
        clean_s, _ = _step_times(clean, tf.data.Dataset.from_tensors((x, y)).repeat(), steps, warmup)
        out["clean_s_per_step"] = round(clean_s, 4)
        seconds += config.train.pretrain_epochs * steps_per_epoch * clean_s
        gpu_seconds += config.train.pretrain_epochs * steps_per_epoch * batch * 3 * f / gpu_flops
    if ens:
        names = ensemble.parse_attack_set(config.ensemble.attacks)
        fns = ensemble.make_attack_fns(names, eps=config.eps, steps=config.attack.steps,
                                       cw_steps=config.ensemble.cw_steps, cw_const=config.ensemble.cw_const)
        xr = rng.uniform(0, 1, (REGENERATION_BATCH, *spec.image_shape)).astype(np.float32)
        yr = rng.integers(0, spec.num_classes, REGENERATION_BATCH).astype(np.int64)
        per_batch = {}
        for name, fn in fns.items():
            compiled = ensemble.compile_attack(fn, lambda z: model.classifier(z, training=False))
            compiled(xr, yr)  # Tracing.
            t = []
            for _ in range(max(1, steps // 4)):
                t0 = time.perf_counter()
                np.asarray(compiled(xr, yr))
                t.append(time.perf_counter() - t0)
            per_batch[name] = round(statistics.median(t), 3)
        # The current model's sets are crafted every `regenerate_every` epochs; each static
        # model's once, at the start (assumed of the recipe's architecture). The static
        # models come from the flagfile's command line (they are files of a previous run).
        static = len(config.ensemble.static_models) + len(header_static_models(path))
        regen = math.ceil(n_train / REGENERATION_BATCH) * sum(per_batch.values())
        regens = math.ceil(config.train.epochs / config.ensemble.regenerate_every)
        out.update(regeneration_attacks=list(names), regeneration_s_per_batch_of_500=per_batch,
                   regeneration_s=round(regen, 1), regenerations=regens, static_models=static)
        seconds += (regens + static) * regen
        gpu_regen = n_train * f * sum(2 * _attack_steps(config, a) for a in names) / gpu_flops
        gpu_seconds += (regens + static) * gpu_regen
    out.update(
        epoch_minutes=round(steps_per_epoch * median / 60, 1),
        total_hours=round(seconds / 3600, 2),
        gpu_s_per_step=round(gpu_step, 5),
        gpu_images_per_s=round(batch / gpu_step),
        gpu_total_hours=round(gpu_seconds / 3600, 2),
    )
    return out


def write_jpegs(directory, n, seed):
    """`n` JPEGs of varied size (500 x 375 on average) in two class subfolders; returns their mean bytes."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        cls = ("cat", "dog")[i % 2]
        os.makedirs(os.path.join(directory, cls), exist_ok=True)
        w, h = int(rng.integers(375, 626)), int(rng.integers(280, 471))
        coarse = rng.uniform(0, 255, (1, h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (h, w))[0] + rng.normal(0, 4, (h, w, 3))
        encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=85)
        path = os.path.join(directory, cls, f"{i}.jpg")
        with open(path, "wb") as f:
            f.write(encoded.numpy())
        sizes.append(os.path.getsize(path))
    return float(np.mean(sizes))


def time_pipeline(n_images, epochs, image_size, batch_size, seed):
    """Images per second of the image-folder pipeline: the scan, the first epoch, the cached ones."""
    from at2l_tf import data, image_folder

    out = {"images": n_images, "image_size": image_size, "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="pipeline_speed-") as tmp:
        t0 = time.perf_counter()
        out["mean_jpeg_bytes"] = round(write_jpegs(tmp, n_images, seed))
        _log(f"wrote {n_images} JPEGs in {time.perf_counter() - t0:.0f} s; timing the pipeline")
        image_folder.index.cache_clear()
        image_folder._bad_files.cache_clear()
        t0 = time.perf_counter()
        image_folder._bad_files(tmp)
        out["scan_images_per_s"] = round(n_images / (time.perf_counter() - t0), 1)
        examples = data.load("image_folder", "train", image_size=image_size, image_dir=tmp)
        n_train = int(examples.cardinality())
        if n_train < batch_size:
            raise ConfigError(
                f"--images={n_images} gives {n_train} training images, fewer than one batch of "
                f"{batch_size}: raise --images"
            )
        out["train_images"] = n_train
        rates = []
        for epoch in range(epochs):  # As `experiment.TrainingData.epoch`.
            ds = examples.shuffle(10000, seed=seed + epoch, reshuffle_each_iteration=False)
            ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            t0, count = time.perf_counter(), 0
            for xb, _ in ds:
                count += int(xb.shape[0])
            rates.append(round(count / (time.perf_counter() - t0), 1))
        out["epoch_images_per_s"] = rates
        out["cached"] = image_folder.cache_budget_bytes() >= n_train * image_size**2 * 3
    return out


def main(argv):
    from at2l_tf.fileio import atomic_write_json

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.cost_lines_from:
        with open(FLAGS.cost_lines_from) as f:
            stored = json.load(f)
        for record in stored["recipes"].values():
            print("\n".join([f"== {record['flagfile']}", *cost_lines(record, stored)]))
        return
    quick = FLAGS.quick
    pick = lambda value, full, short: value if value is not None else (short if quick else full)  # noqa: E731
    cfg = {
        "quick": quick,
        "images": pick(FLAGS.images, 2000, 160),
        "pipeline_epochs": pick(FLAGS.pipeline_epochs, 3, 2),
        "steps": pick(FLAGS.steps, 10, 2),
        "warmup_steps": pick(FLAGS.warmup_steps, 2, 1),
        "gpu_tflops": FLAGS.gpu_tflops,
        "seed": FLAGS.bench_seed,
        "pipeline": FLAGS.pipeline,
        "recipes": list(FLAGS.recipe),
    }
    for key in ("images", "pipeline_epochs", "steps", "warmup_steps"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, received {key}={cfg[key]}")
    if not cfg["recipes"]:
        raise ConfigError("--recipe names no flagfile")
    if not cfg["gpu_tflops"] > 0:
        raise ConfigError(f"gpu_tflops must be > 0, received gpu_tflops={cfg['gpu_tflops']}")
    for path in cfg["recipes"]:
        if not os.path.isfile(path):
            raise ConfigError(f"recipe flagfile does not exist: {path}")
    output_json = FLAGS.output_json  # Read before the recipes are parsed (they reset the flags).
    command = " ".join(["python", "benchmarks/pipeline_speed.py", *sys.argv[1:]])
    started, load_start = time.perf_counter(), os.getloadavg()
    tf.config.set_visible_devices([], "GPU")
    tf.get_logger().setLevel("ERROR")  # Each ensemble attack is its own graph function: no retracing warnings.
    recipes = [time_recipe(p, cfg["steps"], cfg["warmup_steps"], cfg["gpu_tflops"] * 1e12, cfg["seed"])
               for p in cfg["recipes"]]
    result = {
        "benchmark": "pipeline_speed",
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "machine": benchlib.machine(),
        "git_commit": benchlib.git_commit(),
        "versions": {"tensorflow": tf.__version__, "keras": benchlib.version("keras")},
        "settings": cfg,
        "recipes": {os.path.basename(r["flagfile"]): r for r in recipes},
    }
    first = recipes[0]
    if cfg["pipeline"]:
        size = first["image_shape"][0]
        pipe = time_pipeline(cfg["images"], cfg["pipeline_epochs"], size, first["batch_size"], cfg["seed"])
        pipe["consumed_images_per_s"] = first["images_per_s"]
        pipe["consumed_by"] = f"{os.path.basename(first['flagfile'])} step on this CPU"
        pipe["gpu_images_per_s"] = first["gpu_images_per_s"]
        epoch0, cached = pipe["epoch_images_per_s"][0], pipe["epoch_images_per_s"][1:]
        pipe["first_epoch_over_cpu_step"] = round(epoch0 / first["images_per_s"], 2)
        pipe["first_epoch_over_gpu_step"] = round(epoch0 / first["gpu_images_per_s"], 2)
        if cached:
            pipe["cached_over_gpu_step"] = round(min(cached) / first["gpu_images_per_s"], 2)
        result["pipeline"] = pipe
    load_end = os.getloadavg()
    result["load"] = {"load_avg_start": [round(v, 2) for v in load_start],
                      "load_avg_end": [round(v, 2) for v in load_end],
                      "note": "1/5/15-min load averages of the machine (2 cores here: a load "
                              "above 2 means other processes shared the cores)"}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb"] = benchlib.peak_rss_mb()
    print(_table(result))
    if output_json:
        atomic_write_json(output_json, result)
        _log(f"wrote {output_json}")


def _table(result):
    lines = [f"pipeline_speed on {result['machine']['cpu_model']} "
             f"({result['machine']['cpu_count']} cores), load {result['load']['load_avg_start'][0]}"
             f" -> {result['load']['load_avg_end'][0]}"]
    for name, r in result["recipes"].items():
        lines.append(
            f"{name}: {r['s_per_step']:.3g} s/step at batch {r['batch_size']}, "
            f"{r['image_shape'][0]}x{r['image_shape'][1]} ({r['precision']}); "
            f"{r['steps_per_epoch']} steps/epoch, {r['epoch_minutes']} min/epoch, "
            f"{r['total_hours']} h for {r['epochs']} epochs"
            + (f" + {r['pretrain_epochs']} clean" if r["pretrain_epochs"] else "")
            + f"; one GPU on paper: {r['gpu_s_per_step'] * 1000:.3g} ms/step, {r['gpu_total_hours']} h"
        )
    p = result.get("pipeline")
    if p:
        lines.append(
            f"pipeline ({p['images']} JPEGs ~500x375, {p['mean_jpeg_bytes'] / 1000:.0f} kB, to "
            f"{p['image_size']}x{p['image_size']}): scan {p['scan_images_per_s']:.0f} images/s, "
            f"epochs {', '.join(f'{r:.0f}' for r in p['epoch_images_per_s'])} images/s; "
            f"a training step consumes {p['consumed_images_per_s']:.0f} images/s here, "
            f"{p['gpu_images_per_s']:.0f} on one GPU (on paper)"
        )
    return "\n".join(lines)


def cost_lines(record, result):
    """The comment lines that open a flagfile with its cost, from `record` (one of
    `result["recipes"]`) and `result` (the whole JSON, for the machine and the load)."""
    r, m = record, result["machine"]
    bf16 = " with avx512_bf16" if "avx512_bf16" in (m.get("cpu_simd") or []) else ""
    load, load_end = result["load"]["load_avg_start"][0], result["load"]["load_avg_end"][0]
    busy = (" (other jobs shared the cores: an idle machine is faster)"
            if max(load, load_end) > m["cpu_count"] else "")
    epochs = f"{r['epochs']} epochs" + (f" + {r['pretrain_epochs']} clean" if r["pretrain_epochs"] else "")
    what = "training steps only"
    if "regeneration_s" in r:
        n = r["regenerations"] + r["static_models"]
        what = (f"with {n} regenerations of {r['regeneration_s'] / 60:.0f} min; "
                "training steps and regenerations only")
    return [
        f"# Cost, measured on a {m['cpu_count']}-core {m['cpu_model']}{bf16} ({r['precision']}), "
        f"{result['date'][:10]}, load average",
        f"#   {load:g} -> {load_end:g}{busy}:",
        f"#   {r['s_per_step']:.3g} s/step at batch {r['batch_size']}, {r['image_shape'][0]}x{r['image_shape'][1]}; "
        f"{r['steps_per_epoch']} steps/epoch = {r['epoch_minutes']:g} min; {epochs} = ~{r['total_hours']:g} h",
        f"#   ({what}). One GPU, on paper",
        f"#   ({result['settings']['gpu_tflops']:g} TFLOP/s sustained assumed, {r['step_flops_factor']} x the forward "
        f"FLOPs per image per step): {r['gpu_s_per_step'] * 1000:.3g} ms/step, ~{r['gpu_total_hours']:g} h.",
        "#   Measured with:",
        f"#   {r['command']}",
    ]


def command_end(lines):
    """The index of the first line after a flagfile's command (its first line and the
    lines it continues onto with a trailing backslash)."""
    i = 0
    while lines[i].rstrip().endswith("\\"):
        i += 1
    return i + 1


def header_static_models(path):
    """The static models that the flagfile's command line adds (`--static_models=a,b`)."""
    with open(path) as f:
        lines = f.read().splitlines()
    command = " ".join(lines[:command_end(lines)]).replace("\\", " ").replace("#", " ")
    for token in command.split():
        if token.startswith("--static_models="):
            return [p for p in token.split("=", 1)[1].split(",") if p]
    return []


def _log(msg):
    log(msg, prefix="pipeline_speed")


if __name__ == "__main__":
    cli.run(main, "pipeline_speed")
