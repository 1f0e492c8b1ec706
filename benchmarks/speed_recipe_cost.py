"""What each recipe costs, and does the input pipeline keep up with it? The `recipe_cost`
family of `speed.py` (what it times: benchmarks/README.md, "What each family times"). Its
report gives each recipe's cost as the comment lines that open its flagfile after its command
(a test checks the flagfiles against `benchmarks/results/recipe_cost_cpu.json`)."""

import copy
import math
import os
import tempfile
import time

import benchlib
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, data, experiment, image_folder, train
from at2l_tf.errors import ConfigError
from at2l_tf.training import ensemble
from at2l_tf.training.at2l_model import AT2LModel

flags.DEFINE_list("recipe", ["flags/cats_vs_dogs_at2l.flags"],
                  "recipe_cost: flagfiles whose step is timed; the first sets the pipeline's image and batch size.")
flags.DEFINE_bool("pipeline", True, "recipe_cost: also time the image-folder pipeline on generated JPEGs.")
flags.DEFINE_integer("images", None, "recipe_cost: generated JPEGs (default 2,000; --quick: 160).")
flags.DEFINE_integer("pipeline_epochs", None, "recipe_cost: pipeline epochs timed (default 3; --quick: 2).")
flags.DEFINE_float("gpu_tflops", 2.0, "recipe_cost: sustained TFLOP/s assumed for one GPU.")

NAME = "recipe_cost"
FIGURES = ()
SETTINGS = {"recipe": None, "pipeline": None, "images": (2000, 160), "pipeline_epochs": (3, 2), "repeats": (10, 2),
            "warmup": (2, 1), "gpu_tflops": None, "seed": None}
CATS_VS_DOGS_TRAIN = 18610  # TFDS cats_vs_dogs: 23,262 images, train[:80%].
REGENERATION_BATCH = 500  # `ensemble.craft_set`'s batch.


def configure(cfg):
    if not cfg["recipe"]:
        raise ConfigError("--recipe names no flagfile")
    if not cfg["gpu_tflops"] > 0:
        raise ConfigError(f"gpu_tflops must be > 0, received gpu_tflops={cfg['gpu_tflops']}")
    for path in cfg["recipe"]:
        if not os.path.isfile(path):
            raise ConfigError(f"recipe flagfile does not exist: {path}")
        recipe_config(path)  # Checked before any work.


def recipe_config(path):
    """The validated configuration the train command makes of flagfile `path`."""
    values = copy.deepcopy(flags.FLAGS)  # The train command's flags, this run's left alone.
    values.unparse_flags()
    try:
        values(["train", f"--flagfile={path}"])
    except flags.Error as e:
        raise ConfigError(f"{path}: {e}") from None
    return train.config_from_flags(values).validate()


def measure(cfg):
    recipes = [time_recipe(path, cfg) for path in cfg["recipe"]]
    out = {"recipes": {os.path.basename(r["flagfile"]): r for r in recipes}}
    if cfg["pipeline"]:
        first = recipes[0]
        pipe = out["pipeline"] = time_pipeline(cfg["images"], cfg["pipeline_epochs"], first["image_shape"][0],
                                               first["batch_size"], cfg["seed"])
        pipe.update(consumed_images_per_s=first["images_per_s"], gpu_images_per_s=first["gpu_images_per_s"],
                    consumed_by=f"{os.path.basename(first['flagfile'])} step on this CPU")
        epoch0, cached = pipe["epoch_images_per_s"][0], pipe["epoch_images_per_s"][1:]
        pipe["first_epoch_over_cpu_step"] = round(epoch0 / first["images_per_s"], 2)
        pipe["first_epoch_over_gpu_step"] = round(epoch0 / first["gpu_images_per_s"], 2)
        if cached:
            pipe["cached_over_gpu_step"] = round(min(cached) / first["gpu_images_per_s"], 2)
    return out


def train_examples(config):
    """Training examples of one epoch of `config` (`max_train_examples` caps it)."""
    d = config.data
    n = {"mnist": 60000 - d.validation_size, "cifar10": 50000 - d.validation_size,
         "cats_vs_dogs": CATS_VS_DOGS_TRAIN}.get(d.dataset)
    if n is None:
        raise ConfigError(f"no known training-set size for dataset {d.dataset!r}")
    return min(n, d.max_train_examples or n)


def _step_times(model, ds, steps, warmup):
    """Median and mean seconds of `fit` steps over `ds` (after `warmup` untimed steps)."""
    model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
    clock = benchlib.step_clock()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
    gaps = np.diff([clock.begin, *clock.ends])
    return float(np.median(gaps)), float(np.mean(gaps))


def _attack_steps(config, name=None):
    """k, the gradient steps of the step's attack (or of ensemble attack `name`)."""
    if name == "cw":
        return config.ensemble.cw_steps
    attack = name or config.training_attack
    if attack is None:
        return 0
    return config.attack.steps if "steps" in attacks.get_entry(attack).params else 1


def recipe_command(path):
    return f"python benchmarks/speed.py --family=recipe_cost --nopipeline --recipe={path}"


def time_recipe(path, cfg):
    """The cost of the recipe in flagfile `path` on this CPU, and on paper on one GPU."""
    steps, warmup, seed, gpu_flops = cfg["repeats"], cfg["warmup"], cfg["seed"], cfg["gpu_tflops"] * 1e12
    config = recipe_config(path)
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
    benchlib.log(f"{path}: {config.model_name}, {spec.image_shape}, batch {batch}, {precision.policy}: {steps} steps")
    median, mean = _step_times(model, tf.data.Dataset.from_tensors(batches).repeat(), steps, warmup)
    f, k = benchlib.forward_flops(model.classifier, strict=False), _attack_steps(config)
    factor = 6 if ens else (2 * k + 6 if k else 3)
    out = {
        "flagfile": path, "command": recipe_command(path), "dataset": config.data.dataset,
        "model": config.model_name, "image_shape": list(spec.image_shape), "batch_size": batch,
        "precision": precision.policy, "objective": config.train.objective, "attack": config.training_attack,
        "attack_steps": k, "preprocessing": config.preprocessing.name, "train_examples": n_train,
        "steps_per_epoch": steps_per_epoch, "epochs": config.train.epochs,
        "pretrain_epochs": config.train.pretrain_epochs,
        "timed_steps": steps, "s_per_step": round(median, 4), "s_per_step_mean": round(mean, 4),
        "images_per_s": round(batch / median, 1), "forward_gflops_per_image": round(f / 1e9, 5),
        "step_flops_factor": factor,
    }
    seconds = config.train.epochs * steps_per_epoch * median
    gpu_step = batch * factor * f / gpu_flops
    gpu_seconds = config.train.epochs * steps_per_epoch * gpu_step
    if config.train.pretrain_epochs or ens:
        clean = AT2LModel(model.classifier, objective="none", seed=seed)
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
        compiled = {n: ensemble.compile_attack(fn, lambda z: model.classifier(z, training=False))
                    for n, fn in fns.items()}
        wall, _, _ = benchlib.interleaved({n: (lambda c=c: np.asarray(c(xr, yr))) for n, c in compiled.items()},
                                          repeats=max(1, steps // 4), warmup=1)  # Warm-up: tracing.
        per_batch = {n: round(t, 3) for n, t in benchlib.medians(wall).items()}
        # The current model's sets are crafted every `regenerate_every` epochs; each static model's
        # once, at the start (assumed of the recipe's architecture).
        static = len(config.ensemble.static_models) + len(header_static_models(path))
        regen = math.ceil(n_train / REGENERATION_BATCH) * sum(per_batch.values())
        regens = math.ceil(config.train.epochs / config.ensemble.regenerate_every)
        out.update(regeneration_attacks=list(names), regeneration_s_per_batch_of_500=per_batch,
                   regeneration_s=round(regen, 1), regenerations=regens, static_models=static)
        seconds += (regens + static) * regen
        gpu_seconds += (regens + static) * n_train * f * sum(2 * _attack_steps(config, a) for a in names) / gpu_flops
    out.update(epoch_minutes=round(steps_per_epoch * median / 60, 1), total_hours=round(seconds / 3600, 2),
               gpu_s_per_step=round(gpu_step, 5), gpu_images_per_s=round(batch / gpu_step),
               gpu_total_hours=round(gpu_seconds / 3600, 2))
    return out


def header_static_models(path):
    """The static models that the flagfile's command line (its first line and the lines it
    continues onto with a trailing backslash) adds, `--static_models=a,b`."""
    with open(path) as f:
        lines = f.read().splitlines()
    end = 0
    while lines[end].rstrip().endswith("\\"):
        end += 1
    for token in " ".join(lines[:end + 1]).replace("\\", " ").replace("#", " ").split():
        if token.startswith("--static_models="):
            return [p for p in token.split("=", 1)[1].split(",") if p]
    return []


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
    out = {"images": n_images, "image_size": image_size, "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="pipeline_speed-") as tmp:
        t0 = time.perf_counter()
        out["mean_jpeg_bytes"] = round(write_jpegs(tmp, n_images, seed))
        benchlib.log(f"wrote {n_images} JPEGs in {time.perf_counter() - t0:.0f} s; timing the pipeline")
        image_folder.index.cache_clear()
        image_folder._bad_files.cache_clear()
        t0 = time.perf_counter()
        image_folder._bad_files(tmp)
        out["scan_images_per_s"] = round(n_images / (time.perf_counter() - t0), 1)
        examples = data.load("image_folder", "train", image_size=image_size, image_dir=tmp)
        n_train = int(examples.cardinality())
        if n_train < batch_size:
            raise ConfigError(f"--images={n_images} gives {n_train} training images, fewer than one batch of "
                              f"{batch_size}: raise --images")
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


def cost_lines(r, result):
    """The comment lines that open a flagfile with its cost, from `r` (one of `result["recipes"]`)
    and `result` (the machine, the date and the load of the run)."""
    m, load = result["machine"], result["load"]
    bf16 = " with avx512_bf16" if "avx512_bf16" in (m.get("cpu_simd") or []) else ""
    start, end = load["load_avg_start"][0], load["load_avg_end"][0]
    busy = " (other jobs shared the cores: an idle machine is faster)" if max(start, end) > m["cpu_count"] else ""
    epochs = f"{r['epochs']} epochs" + (f" + {r['pretrain_epochs']} clean" if r["pretrain_epochs"] else "")
    what = "training steps only"
    if "regeneration_s" in r:
        what = (f"with {r['regenerations'] + r['static_models']} regenerations of {r['regeneration_s'] / 60:.0f} min; "
                "training steps and regenerations only")
    return [
        f"# Cost, measured on a {m['cpu_count']}-core {m['cpu_model']}{bf16} ({r['precision']}), "
        f"{result['date'][:10]}, load average",
        f"#   {start:g} -> {end:g}{busy}:",
        f"#   {r['s_per_step']:.3g} s/step at batch {r['batch_size']}, {r['image_shape'][0]}x{r['image_shape'][1]}; "
        f"{r['steps_per_epoch']} steps/epoch = {r['epoch_minutes']:g} min; {epochs} = ~{r['total_hours']:g} h",
        f"#   ({what}). One GPU, on paper",
        f"#   ({result['settings']['gpu_tflops']:g} TFLOP/s sustained assumed, {r['step_flops_factor']} x the forward "
        f"FLOPs per image per step): {r['gpu_s_per_step'] * 1000:.3g} ms/step, ~{r['gpu_total_hours']:g} h.",
        "#   Measure again with:",
        f"#   {recipe_command(r['flagfile'])}",
    ]


def report(record):
    lines, p = [], record.get("pipeline")
    if p:
        lines.append(
            f"pipeline ({p['images']} JPEGs ~500x375, {p['mean_jpeg_bytes'] / 1000:.0f} kB, to {p['image_size']}x"
            f"{p['image_size']}): scan {p['scan_images_per_s']:.0f} images/s, epochs "
            f"{', '.join(f'{r:.0f}' for r in p['epoch_images_per_s'])} images/s; a training step consumes "
            f"{p['consumed_images_per_s']:.0f} images/s here, {p['gpu_images_per_s']:.0f} on one GPU (on paper)")
    for r in record["recipes"].values():
        lines += [f"== {r['flagfile']}", *cost_lines(r, record)]
    return lines
