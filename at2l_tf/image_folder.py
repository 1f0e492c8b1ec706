"""A folder of class subfolders as a dataset: `train --image_dir=PATH`.

    PATH/Cat/1.jpg, PATH/Cat/2.jpg, ..., PATH/Dog/1.jpg, ...   (e.g. Kaggle's PetImages)

The classes are the subfolders, sorted by name (as Keras'
`image_dataset_from_directory` names them); label k is the k-th name. Image
files are those Keras reads (`.jpg .jpeg .png .bmp .gif`, any case, in the
subfolders and below); other files (`Thumbs.db`, `.txt`) are ignored. Images
are decoded as RGB (`tf.io.decode_image`, the first frame of a GIF) and
resized to `image_size` x `image_size` with antialiasing (the aspect ratio is
not kept, as Keras' default); the float images in [0, 1] are `data.load`'s.

**Splits.** Each class's files, sorted, are permuted with a fixed seed
(`SPLIT_SEED`, not the training seed: every training seed is judged on the same
test images) and cut 80% / 10% / 10% into train / validation / test (at least
one file each); each split is then permuted (classes interleaved). The splits
are a function of the file names alone, so the evaluate command finds the same
test split as the train command. `--validation_size` does not apply (0 still
turns validation off).

**Files that do not decode.** Kaggle's PetImages holds files that are not
images (zero bytes, or truncated or foreign data named `.jpg`; TFDS drops
1,738 of its files). The first load of a folder in a process decodes every
file once, in parallel, with the very decoder of the pipeline, and leaves out
those that fail, reporting them in one line on stderr ("image_dir: skipped 3
of 1,200 files that do not decode as images (e.g. PetImages/Cat/666.jpg)").
Training never meets a bad file mid-epoch (unless a file changes after the
scan); the step count is exact. The scan
costs one decode per file (`benchmarks/speed.py --family=recipe_cost` measures the rate).

Why not `keras.utils.image_dataset_from_directory`: it decodes inside its own
`map`, where a file that fails to decode stops the iteration with an
`InvalidArgumentError` mid-epoch (Keras' own "image classification from
scratch" example deletes such PetImages files by hand before calling it), it
cannot say which files it would skip, it offers two subsets (training /
validation), not three, and it yields float32 images, 4x the memory of the
uint8 cache here. The listing below follows its conventions.

**Cache.** The resized uint8 images of a split are cached in memory when they
fit: `n * image_size**2 * 3` bytes within `cache_budget_bytes()` (a quarter of
the physical memory); otherwise every epoch decodes and resizes again
(`num_parallel_calls=AUTOTUNE`), which `benchmarks/speed.py --family=recipe_cost` shows to
be faster than a CPU training step consumes.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from at2l_tf.errors import DatasetError
from at2l_tf.log import log as _log

NAME = "image_folder"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # Keras' ALLOWLIST_FORMATS.
SPLIT_SEED = 0
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # The rest is train.
DEFAULT_EPS = 8 / 255
DEFAULT_MODEL = "cats_vs_dogs_cnn"


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The listing of a folder: classes, files per split, what was ignored.

    Attributes:
        directory: the folder (absolute).
        class_names: subfolder names, sorted; label k is `class_names[k]`.
        splits: `{split: (paths, labels)}`, numpy arrays, before the decode check.
        ignored: paths of files that are not images by name (`Thumbs.db`, ...).
    """

    directory: str
    class_names: tuple
    splits: dict
    ignored: tuple

    @property
    def num_files(self):
        return sum(len(p) for p, _ in self.splits.values())


def check_directory(directory):
    """The class subfolder names of `directory`, sorted, after the checks that need no listing
    of files.

    Raises:
        DatasetError: the path does not exist, is not a folder, or holds fewer than
            two class subfolders.
    """
    if not directory:
        raise DatasetError("image_dir is empty: give a folder of class subfolders")
    if not os.path.exists(directory):
        raise DatasetError(f"image_dir does not exist: {directory}")
    if not os.path.isdir(directory):
        raise DatasetError(f"image_dir is not a folder: {directory}")
    classes = sorted(
        d for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    )
    if len(classes) < 2:
        found = f"one ({classes[0]})" if classes else "none"
        raise DatasetError(
            f"image_dir {directory} must hold one subfolder per class, at least two; found {found}"
        )
    return tuple(classes)


@functools.lru_cache(maxsize=8)
def index(directory):
    """The `FolderIndex` of `directory` (cached per process).

    Raises:
        DatasetError: see `check_directory`; or a class with fewer than 3 image
            files (one each for train, validation and test).
    """
    directory = os.path.abspath(directory)
    classes = check_directory(directory)
    rng = np.random.default_rng(SPLIT_SEED)
    parts = {s: ([], []) for s in ("train", "validation", "test")}
    ignored = []
    for label, name in enumerate(classes):
        files = []
        for root, dirs, names in os.walk(os.path.join(directory, name), followlinks=True):
            dirs.sort()
            for fname in sorted(names):
                path = os.path.join(root, fname)
                (files if fname.lower().endswith(IMAGE_EXTENSIONS) else ignored).append(path)
        if len(files) < 3:
            raise DatasetError(
                f"class {name!r} of image_dir {directory} has {len(files)} image file(s) "
                f"({', '.join(IMAGE_EXTENSIONS)}); each class needs at least 3 "
                "(train, validation and test)"
            )
        files = [files[i] for i in rng.permutation(len(files))]
        n_val = max(1, round(SPLIT_FRACTIONS["validation"] * len(files)))
        n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(files)))
        cuts = {"test": files[:n_test], "validation": files[n_test:n_test + n_val],
                "train": files[n_test + n_val:]}
        for split, chosen in cuts.items():
            parts[split][0].extend(chosen)
            parts[split][1].extend([label] * len(chosen))
    splits = {}
    for split, (p, l) in parts.items():
        # Classes interleaved: the first N files of a split (--max_train_examples, the
        # evaluation's first images) and a shuffle buffer smaller than the split mix them.
        order = rng.permutation(len(p))
        splits[split] = (np.array(p, dtype=str)[order], np.array(l, dtype=np.int64)[order])
    return FolderIndex(directory, classes, splits, tuple(ignored))


def _decode(path):
    """uint8 RGB image `(h, w, 3)` of the file at `path` (the pipeline's decoder)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def _resized(path, side):
    image = tf.image.resize(_decode(path), (side, side), antialias=True)
    # Back to uint8: the cache holds a quarter of float32's bytes.
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


@functools.lru_cache(maxsize=8)
def _bad_files(directory):
    """`(bad paths, number of image files)` of `directory`: one parallel decode of every
    file; the line that reports them is printed once per process."""
    idx = index(directory)
    paths = np.concatenate([p for p, _ in idx.splits.values()])
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    # `ignore_errors` drops the elements whose decode fails; the survivors' indices tell which.
    ds = ds.map(lambda i, p: (i, tf.shape(_decode(p))), num_parallel_calls=tf.data.AUTOTUNE)
    good = np.zeros(len(paths), dtype=bool)
    for i, _ in ds.ignore_errors().batch(1024).as_numpy_iterator():
        good[i] = True
    bad = tuple(sorted(str(p) for p in paths[~good]))
    if bad or idx.ignored:
        _log(describe_skipped(directory, bad, len(paths), idx.ignored))
    return frozenset(bad), len(paths)


def describe_skipped(directory, bad, total, ignored=()):
    """The one line that reports a folder's skipped files (paths shown from the folder's parent)."""
    parent = os.path.dirname(os.path.abspath(directory).rstrip(os.sep))
    show = lambda p: os.path.relpath(p, parent)  # noqa: E731
    parts = []
    if bad:
        parts.append(f"skipped {len(bad):,} of {total:,} {_files(total)} that do not decode as "
                     f"images (e.g. {show(bad[0])})")
    if ignored:
        one = len(ignored) == 1
        parts.append(f"ignored {len(ignored):,} {'file that is not an image' if one else 'files that are not images'}"
                     f" by name (e.g. {show(ignored[0])})")
    return "image_dir: " + "; ".join(parts)


def _files(n):
    return "file" if n == 1 else "files"


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    """`data.DatasetSpec`'s fields, and the folder's class names."""

    name: str
    num_classes: int
    image_shape: tuple
    default_eps: float
    default_model: str
    class_names: tuple = ()
    directory: str = ""


def get_spec(directory, image_size):
    """The spec of the folder (no image is read; the subfolders are listed).

    Raises:
        DatasetError: see `check_directory`; an `image_size` under 8.
    """
    if image_size < 8:
        raise DatasetError(f"image_size must be >= 8, received image_size={image_size}")
    classes = check_directory(directory)
    return FolderSpec(NAME, len(classes), (image_size, image_size, 3), DEFAULT_EPS, DEFAULT_MODEL,
                      classes, os.path.abspath(directory))


def check_class_names(model_classes, spec, where):
    """Raises `DatasetError` unless a model trained on classes `model_classes` (its export's
    `class_names`, or None: not recorded) sees the same classes, in the same order, in `spec`'s folder."""
    if model_classes and tuple(model_classes) != tuple(spec.class_names):
        raise DatasetError(
            f"the model at {where} was trained on classes {', '.join(model_classes)}; image_dir "
            f"{spec.directory} has {', '.join(spec.class_names)}"
        )


def cache_budget_bytes():
    """Bytes of resized images a split may cache in memory: a quarter of the physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # Not POSIX: assume 8 GiB of memory.
        return 2 << 30


def load(directory, split, image_size, max_examples=None, cache=None):
    """One split as an unbatched dataset of `(uint8 image (size, size, 3), int64 label)`.

    Args:
        directory: the folder of class subfolders.
        split: `train`, `validation` or `test`.
        image_size: side of the square images after resizing.
        max_examples: keep only the first `max_examples` files of the split.
        cache: cache the resized images in memory; `None` (default): when they fit
            (`cache_budget_bytes`).

    Raises:
        DatasetError: see `index`; or a split left with no image that decodes.
    """
    idx = index(directory)
    bad, _ = _bad_files(idx.directory)
    paths, labels = idx.splits[split]
    keep = np.array([p not in bad for p in paths], dtype=bool)
    paths, labels = paths[keep], labels[keep]
    if max_examples is not None:
        paths, labels = paths[:max_examples], labels[:max_examples]
    if len(paths) == 0:
        raise DatasetError(f"the {split} split of image_dir {directory} has no file that decodes as an image")
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(lambda p, y: (_resized(p, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)
    if cache is None:
        cache = len(paths) * image_size * image_size * 3 <= cache_budget_bytes()
    ds = ds.cache() if cache else ds
    # Every file decoded in the scan; the cardinality stays known for `fit`.
    return ds.apply(tf.data.experimental.assert_cardinality(len(paths)))


