"""SavedModel export for TF Serving, and loading of trained classifiers.

Layout: `<export_dir>/<version>/` with integer versions, as TF Serving expects.
The `serving_default` signature takes `images`, float32 `(batch, H, W, C)` in
[0, 1], and returns `probabilities` (softmax), `classes` (int64 argmax) and
`logits` (for attacks: gradients of logits do not saturate as softmax does).
A model trained on a folder of class subfolders (`train --image_dir`) also
returns `class_name`, the name of the predicted class (a string per image, e.g.
"Cat"), and lists every name, in label order, under `class_names` in the
metadata; `load_classifier` gives them as `Classifier.class_names`.

**Domain check.** By default (`input_check=True`) the signature refuses a
request with a NaN or infinite value, or a value outside [0, 1]: a
`tf.debugging.Assert` fails, which TF Serving returns as `INVALID_ARGUMENT`
(gRPC) or HTTP 400 with the message ("images must be finite" / "images must be
in [0, 1]"), instead of answering for inputs that the robustness measurement
does not cover (attacks are confined to [0, 1]; an image scaled to [0, 255] by
mistake would be classified without complaint otherwise). Clients that clip
upstream can export without it (`export --serving_input_check=off`, `train
--serving_input_check=off`); the metadata records which (`serving_input_check`).
The check costs two reductions over the batch.

**Robustness record.** `evaluate --record` and the train command's final check
write `assets/robustness.json` into the version directory
(`evaluation.record`): what was measured on this very version. TF Serving
ignores the file; it ships with the version it describes.
A model with a defence layer in front (`at2l_tf.defenses`) serves the whole
defence there, and also exports the network behind the layer as the
`classifier` signature (input `inputs`, the layer's output), with the layer's
configuration in the metadata (`preprocessing`), so that adaptive attacks
(BPDA, LS-PGA) can run on the SavedModel alone.
A version is written to a hidden temporary directory and renamed into place,
so an interrupted export never leaves a half-written version that TF Serving
would try to load.

`load_classifier` accepts such an export root, one version directory, or a
Keras `.keras` file, and returns a `Classifier` whose `model_fn` gives logits.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf

from at2l_tf import defenses, identity, precision
from at2l_tf.errors import ModelLoadError

METADATA_FILE = "at2l_metadata.json"


def _versions(export_dir):
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(d) for d in os.listdir(export_dir) if d.isdigit())


def check_image_domain(images, clip_min=0.0, clip_max=1.0):
    """`images`, after assertions that every value is finite and in [clip_min, clip_max].

    Graph-safe: in a `tf.function` (a serving signature) a bad batch fails the
    call with `InvalidArgumentError` ("assertion failed: [images must be ...]");
    the gradient passes through unchanged.
    """
    finite = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(images)),
        ["images must be finite: received NaN or Inf"],
    )
    with tf.control_dependencies([finite]):
        inside = tf.debugging.Assert(
            tf.reduce_all((images >= clip_min) & (images <= clip_max)),
            [f"images must be in [{clip_min:g}, {clip_max:g}]: received min", tf.reduce_min(images),
             "max", tf.reduce_max(images)],
        )
    with tf.control_dependencies([finite, inside]):
        return tf.identity(images)


def export_saved_model(model, export_dir, *, version=None, metadata=None, input_check=True,
                       class_names=None):
    """Exports a Keras classifier (images -> logits) as a TF Serving SavedModel.

    Args:
        model: a built `keras.Model` returning logits.
        export_dir: export root; the model goes to `<export_dir>/<version>/`.
        version: integer version; default one more than the largest present.
        metadata: JSON-serialisable dict saved as `at2l_metadata.json` beside
            the SavedModel (dataset, model name, training configuration...).
        input_check: the serving signature refuses images with NaN, Inf or
            values outside [0, 1] (`check_image_domain`; module docstring).
        class_names: the name of each label, in label order; given, the
            signature also returns `class_name` (string per image) and the
            metadata records them under `class_names`.

    Returns:
        The path of the written version directory.

    Raises:
        FileExistsError: if `version` already exists (versions are immutable).

    The export computes in float32 whatever precision trained `model`: a model
    built under a mixed policy is copied to float32 first (`precision.to_float32`).
    """
    model = precision.to_float32(model)
    input_shape = tuple(model.input_shape[1:])
    if version is None:
        version = (_versions(export_dir) or [0])[-1] + 1
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, received version={version!r}")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"export version already exists: {final}")
    num_classes = int(model.output_shape[-1])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names must name the model's {num_classes} classes, received {class_names}"
            )
    os.makedirs(export_dir, exist_ok=True)

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        if input_check:
            images = check_image_domain(images)
        logits = model(images, training=False)
        out = {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1),
        }
        if class_names is not None:  # A constant of the graph: TF Serving needs no metadata.
            out["class_name"] = tf.gather(tf.constant(class_names), out["classes"])
        return out

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec((None,) + input_shape, tf.float32, name="images")],
    )
    layer, net = defenses.split(model)
    if layer is not None:

        def behind_layer(inputs):
            return {"logits": net(inputs, training=False)}

        archive.add_endpoint(
            name="classifier",
            fn=behind_layer,
            input_signature=[
                tf.TensorSpec((None,) + tuple(net.input_shape[1:]), tf.float32, name="inputs")
            ],
        )
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        archive.write_out(tmp, verbose=False)
        meta = dict(metadata or {})
        meta["preprocessing"] = _describe_layer(layer, tmp)
        meta.setdefault("input_shape", list(input_shape))
        meta.setdefault("num_classes", num_classes)
        if class_names is not None:
            meta["class_names"] = class_names
        meta["serving_input_check"] = bool(input_check)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        os.rename(tmp, final)  # Atomic on one filesystem.
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# A Defense-GAN export carries a copy of its generator, so that the export
# alone can rebuild the projection (BPDA needs it); the metadata names the
# copy relative to the version directory.
GENERATOR_COPY = "defense_gan_generator.keras"


def _describe_layer(layer, version_dir):
    if layer is None:
        return {"name": "none"}
    described = keras.saving.serialize_keras_object(layer)
    if isinstance(layer, defenses.DefenseGANProjection):
        from at2l_tf.defenses import defense_gan

        source = defense_gan.resolve_generator_path(layer.generator_path)
        shutil.copyfile(source, os.path.join(version_dir, GENERATOR_COPY))
        described["config"] = dict(described["config"], generator_path=GENERATOR_COPY)
    return {"name": defenses.compose.layer_name(layer), "layer": described}


def _layer_from_metadata(meta, where):
    described = meta.get("preprocessing") or {"name": "none"}
    if described["name"] == "none":
        return None
    layer = described["layer"]
    path = layer.get("config", {}).get("generator_path")
    if path and not os.path.isabs(path):  # A Defense-GAN export's own copy.
        layer = dict(layer, config=dict(layer["config"], generator_path=os.path.join(where, path)))
    try:
        return keras.saving.deserialize_keras_object(layer)
    except Exception as e:
        raise ModelLoadError(f"cannot rebuild the defence layer recorded in {where}: {_first_line(e)}") from e


@dataclasses.dataclass
class Classifier:
    """A loaded classifier.

    Attributes:
        model_fn: callable, float32 images `(batch, H, W, C)` -> logits.
        input_shape: `(H, W, C)`.
        num_classes: width of the logits.
        path: where it was loaded from.
        metadata: the export's metadata (empty for `.keras` files), read with the
            names of today (`identity.renamed`: an older export's `defense` is `objective`).
        preprocessing: the defence layer in front of the network, or `None`.
        net_fn: the network behind `preprocessing` (its outputs -> logits);
            `None` without a layer.
        keras_model: the float32 Keras model of a `.keras` file (`None` for
            a SavedModel), from which `search_fns` copies the network.
        class_names: the name of each label (an export of `train --image_dir`),
            or `None`.
    """

    model_fn: object
    input_shape: tuple
    num_classes: int
    path: str
    metadata: dict
    preprocessing: object = None
    net_fn: object = None
    keras_model: object = dataclasses.field(default=None, repr=False)
    class_names: tuple = None

    @property
    def preprocessing_name(self):
        return defenses.compose.layer_name(self.preprocessing)


def model_digest(path):
    """SHA-256 of a model's graph and weights: a `.keras` file, or a SavedModel
    version's `saved_model.pb` and `variables/` (not its assets or metadata, so
    that writing a robustness record does not change it)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [path]
    else:
        version_dir = resolve_saved_model_dir(path)
        files = [os.path.join(version_dir, "saved_model.pb")]
        variables = os.path.join(version_dir, "variables")
        if os.path.isdir(variables):
            files += [os.path.join(variables, f) for f in sorted(os.listdir(variables))]
    for name in files:
        h.update(os.path.basename(name).encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def resolve_saved_model_dir(path):
    """Maps an export root to its newest version; returns `path` if it is a SavedModel."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = _versions(path)
    if versions:
        return os.path.join(path, str(versions[-1]))
    raise FileNotFoundError(
        f"no SavedModel (saved_model.pb) or numbered version directory in {path}"
    )


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_keras_model(path):
    """Loads a `.keras` file (uncompiled).

    Raises:
        FileNotFoundError: if `path` is not a file.
        ModelLoadError: if it is not a readable Keras archive (Keras itself
            reports "File not found" for a file that exists but is corrupt).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file does not exist: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"cannot read {path}: not a .keras archive (corrupt or truncated?)")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a damaged archive.
        raise ModelLoadError(f"cannot read {path} as a Keras model: {_first_line(e)}") from e


def _load_saved_model(version_dir):
    try:
        return tf.saved_model.load(version_dir)
    except Exception as e:  # Damaged protobuf or variables.
        raise ModelLoadError(f"cannot read the SavedModel in {version_dir}: {_first_line(e)}") from e


def load_classifier(path):
    """Loads a classifier from a SavedModel export or a `.keras` file.

    Raises:
        FileNotFoundError: if `path` does not exist or holds no model.
        ModelLoadError: if the model is there but cannot be read.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path does not exist: {path}")
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise FileNotFoundError(f"not a .keras file or SavedModel directory: {path}")
        model = precision.to_float32(load_keras_model(path))  # Judged in float32.
        layer, model_fn, net_fn = defenses.compose.inference_fns(model)
        return Classifier(
            model_fn=model_fn,
            input_shape=tuple(model.input_shape[1:]),
            num_classes=int(model.output_shape[-1]),
            path=path,
            metadata={},
            preprocessing=layer,
            net_fn=net_fn,
            keras_model=model,
        )
    version_dir = resolve_saved_model_dir(path)
    loaded = _load_saved_model(version_dir)
    if "serving_default" not in loaded.signatures:
        raise ModelLoadError(f"the SavedModel in {version_dir} has no serving_default signature")
    serving = loaded.signatures["serving_default"]
    spec = serving.structured_input_signature[1]["images"]
    meta = {}
    meta_path = os.path.join(version_dir, METADATA_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = identity.renamed(json.load(f))
    num_classes = int(serving.structured_outputs["logits"].shape[-1])

    def model_fn(x):
        return serving(images=x)["logits"]

    model_fn.loaded = loaded  # Keep the restored object (and its variables) alive.
    layer = _layer_from_metadata(meta, version_dir)
    net_fn = None
    if layer is not None:
        if "classifier" not in loaded.signatures:
            raise ModelLoadError(
                f"the SavedModel in {version_dir} names a defence layer but has no classifier signature"
            )
        behind = loaded.signatures["classifier"]

        def net_fn(z):
            return behind(inputs=z)["logits"]

        net_fn.loaded = loaded
    names = meta.get("class_names")
    return Classifier(
        model_fn, tuple(spec.shape[1:]), num_classes, version_dir, meta, layer, net_fn,
        class_names=tuple(names) if names else None,
    )


def search_fns(classifier, policy="mixed_bfloat16"):
    """`(model_fn, net_fn)` of a copy of `classifier`'s network under `policy`, same weights.

    What attacks search on with `--attack_precision=bfloat16` (`attacks.search`;
    the verdicts stay `classifier`'s, float32). The defence layer, if any, is
    `classifier.preprocessing` itself, float32, in front of the copy; `net_fn`
    is the copy alone (`None` without a layer). A `.keras` file's network is
    copied directly; a SavedModel's is rebuilt from the architecture its
    metadata names (exports of `train`), its weights read from the SavedModel
    and checked against the served logits.

    Raises:
        ModelLoadError: a SavedModel whose metadata names no known architecture
            (e.g. one made by `export` from a `.keras` file: evaluate that file
            instead), or whose variables do not fit it.
    """
    layer = classifier.preprocessing
    if classifier.keras_model is not None:
        _, net = defenses.split(classifier.keras_model)
    else:
        net = _rebuild_saved_network(classifier)
    copy = precision.search_copy(net, policy)

    def net_fn(z):
        return copy(z, training=False)

    def model_fn(x):
        return net_fn(x if layer is None else layer(x, training=False))

    model_fn.keep = net_fn.keep = copy  # Keep the copy (and its variables) alive.
    return model_fn, (None if layer is None else net_fn)


def _rebuild_saved_network(classifier):
    """The float32 Keras network of a SavedModel export, from its metadata's architecture."""
    from at2l_tf import models  # Local: loading a model needs no model registry.

    name = classifier.metadata.get("model")
    try:
        models.get_entry(name) if name else None
    except Exception:
        name = None
    if not name:
        raise ModelLoadError(
            f"cannot make a reduced-precision copy of the SavedModel in {classifier.path}: its "
            "metadata names no known architecture (a model exported from a .keras file: evaluate "
            "that file instead, or use --attack_precision=float32)"
        )
    shape = tuple(classifier.input_shape)
    if classifier.preprocessing is not None:
        shape = tuple(classifier.preprocessing.compute_output_shape((None,) + shape)[1:])
    net = models.get_model(name, input_shape=shape, num_classes=classifier.num_classes)
    loaded = (classifier.net_fn or classifier.model_fn).loaded
    saved = [v for v in loaded.variables if "seed_generator" not in v.name]
    weights = net.weights
    saved = saved[len(saved) - len(weights):] if len(saved) >= len(weights) else saved
    if len(saved) != len(weights) or any(
        tuple(s.shape) != tuple(w.shape) for s, w in zip(saved, weights)
    ):
        raise ModelLoadError(
            f"the variables of the SavedModel in {classifier.path} do not fit the architecture "
            f"{name!r} its metadata names; use --attack_precision=float32"
        )
    net.set_weights([v.numpy() for v in saved])
    probe = tf.random.stateless_uniform((2,) + shape, seed=[0, 0])
    served = (classifier.net_fn or classifier.model_fn)(probe)
    if not np.allclose(net(probe, training=False).numpy(), served.numpy(), atol=1e-4, rtol=1e-4):
        raise ModelLoadError(
            f"the network rebuilt from the metadata of {classifier.path} ({name!r}) does not give "
            "the served logits; use --attack_precision=float32"
        )
    return net
