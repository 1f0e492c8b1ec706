"""What an evaluation measures: the models (phase 3) and the images (phase 6).

`load_models(config)` loads the evaluated model and the transfer sources,
decides the dataset (the config's, else the one the export records), checks
that every model takes the dataset's images and classes, and resolves the
attacks' precision with the bfloat16 copies it needs; `evaluation_data`
loads the first `num_examples` images of the split, as the model was trained.
Both are phases of `evaluation.run.evaluate`.
"""

import dataclasses

from at2l_tf import data, image_folder, precision, savedmodel
from at2l_tf.errors import ConfigError


@dataclasses.dataclass
class LoadedModels:
    """Phase 3's result: the target, the transfer sources, the data spec, and
    the reduced-precision copies the attacks search on (if any).

    Attributes:
        target: the evaluated `savedmodel.Classifier` (float32).
        sources: `{path: model_fn}` of transfer sources (float32), or `{}`.
        dataset: the dataset's name (flag, else the export's metadata).
        image_dir: the folder of an `image_folder` dataset (flag, else the
            one the model was trained on), or `None`.
        image_size: the image side used to load the data.
        spec: `data.get_spec(dataset, image_size)`.
        precision: the resolved `precision.Precision` of the attacks' search.
        search: `(model_fn, net_fn)` of the target's bfloat16 copy, or `None`
            for a float32 search.
        search_sources: `{path: model_fn}` of the sources' bfloat16 copies.
    """

    target: object
    sources: dict
    dataset: str
    image_size: int
    spec: object
    precision: object
    image_dir: object = None
    search: object = None
    search_sources: dict = dataclasses.field(default_factory=dict)


def load_models(config):
    """Phase 3: the target and sources (float32), the data spec, and the bfloat16
    copies the attacks search on when `config.attacks.precision` asks for them.

    Args:
        config: a validated `EvaluationConfig`.

    Returns:
        A `LoadedModels`.

    Raises:
        ConfigError: no dataset known; a model that does not take the
            dataset's images or classes.
        ModelLoadError: a model that cannot be read, or (bfloat16) copied.
    """
    target = savedmodel.load_classifier(config.model.model_dir)
    meta = target.metadata
    dataset = config.images.dataset or (image_folder.NAME if config.images.image_dir else meta.get("dataset"))
    image_dir = config.images.image_dir or (meta.get("config") or {}).get("data", {}).get("image_dir")
    if dataset is None:
        raise ConfigError(
            f"--dataset is required: the model at {target.path} records no dataset in its metadata"
        )
    image_size = config.images.image_size or target.input_shape[0] or data.DEFAULT_IMAGE_SIZE
    spec = data.get_spec(dataset, image_size, image_dir)
    check_compatible(target, spec)
    if dataset == image_folder.NAME:  # Label k must name the same class for the model and the folder.
        image_folder.check_class_names(target.class_names, spec, target.path)
    source_models = {}
    for path in config.model.source_model_dirs:
        source = savedmodel.load_classifier(path)
        check_compatible(source, spec)
        source_models[path] = source
    prec = precision.resolve_attack_precision(config.attacks.precision)
    loaded = LoadedModels(
        target=target,
        sources={p: s.model_fn for p, s in source_models.items()},
        dataset=dataset,
        image_size=image_size,
        spec=spec,
        precision=prec,
        image_dir=image_dir,
    )
    if prec.mixed:
        if source_models:
            loaded.search_sources = {
                p: savedmodel.search_fns(s, prec.policy)[0] for p, s in source_models.items()
            }
        else:
            loaded.search = savedmodel.search_fns(target, prec.policy)
    return loaded


def check_compatible(classifier, spec):
    """Raises `ConfigError` unless `classifier` takes `spec`'s images and classes."""
    shape = tuple(classifier.input_shape)
    if len(shape) != len(spec.image_shape) or any(
        m is not None and m != d for m, d in zip(shape, spec.image_shape)
    ):
        hint = " (set --image_size)" if spec.name == "cats_vs_dogs" else ""
        raise ConfigError(
            f"images of the wrong shape: the model at {classifier.path} takes images of shape "
            f"{shape}, {spec.name} images have shape {tuple(spec.image_shape)}{hint}"
        )
    if classifier.num_classes != spec.num_classes:
        raise ConfigError(
            f"the model at {classifier.path} has {classifier.num_classes} classes, "
            f"{spec.name} has {spec.num_classes}"
        )


def evaluation_data(config, loaded):
    """Phase 6: the first `num_examples` images of the split, batched, as the
    model was trained (the validation split depends on its validation size)."""
    im = config.images
    validation_size = (loaded.target.metadata.get("config") or {}).get("data", {}).get(
        "validation_size", data.DEFAULT_VALIDATION_SIZE
    )
    return data.make_pipeline(
        data.load(
            loaded.dataset,
            im.split,
            data_dir=im.data_dir,
            validation_size=validation_size,
            image_size=loaded.image_size,
            max_examples=im.num_examples,
            image_dir=loaded.image_dir,
        ),
        batch_size=im.batch_size,
        cache=False,
    )


__all__ = ["LoadedModels", "check_compatible", "evaluation_data", "load_models"]
