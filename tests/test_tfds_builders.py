"""Cats vs Dogs and CIFAR-10 through TFDS's real builders, downloaded over HTTP.

Small archives in the upstream layouts are written into a temporary directory
and served by an HTTP server on 127.0.0.1 inside the test. The one thing
mocked is where the builders download from: the builder's URL (the module
constant `cats_vs_dogs._URL`, the `url` of `Cifar10._cifar_info`) is pointed at
that server. TFDS then downloads, extracts, generates and caches into a
temporary data_dir as on a networked machine, and the real commands train,
evaluate and export on the result.

Checksums: TFDS 4.9 registers the upstream URLs' checksums; a URL it does not
know (the server's) is downloaded and its checksum recorded, not validated,
unless `DownloadConfig(force_checksums_validation=True)`, which at2l_tf does not
set. So the test needs no checksum of its own. The Cats vs Dogs builder insists on
exactly `_NUM_CORRUPT_IMAGES` (1,738) non-JPEG files in the archive: the test
archive has that many, a few bytes each, as the upstream one has.
"""

import functools
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums, downloader
from tensorflow_datasets.image_classification import cats_vs_dogs, cifar

from at2l_tf import data, savedmodel
from at2l_tf.errors import DatasetError

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
CATS, DOGS = 30, 30  # 60 images: 48 / 6 / 6 in at2l_tf's 80% / 10% / 10% slices.
CIFAR_PER_BATCH, CIFAR_TEST = 8, 10  # 5 training batches: 40 training images.
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAT_RGB, DOG_RGB = (200, 40, 40), (40, 40, 200)  # Cats red, dogs blue: the label shows in the pixels.


# ------------------------------------------------------------------ archives


def _jpeg(rgb, seed):
    noise = np.random.default_rng(seed).integers(-10, 11, (24, 24, 3))
    image = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()  # A JFIF file, as the builder checks.


def write_cats_vs_dogs_zip(path):
    """`kagglecatsanddogs_5340.zip` as upstream lays it out: `PetImages/{Cat,Dog}/N.jpg`,
    non-JPEG files among them (1,738 upstream; the builder checks the count), a
    `Thumbs.db` per folder and the licence and readme at the top."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("CDLA-Permissive-2.0.pdf", b"%PDF-1.4 licence")
        z.writestr("readme[1].txt", b"Cats and dogs.")
        for folder, rgb, count in (("Cat", CAT_RGB, CATS), ("Dog", DOG_RGB, DOGS)):
            for i in range(count):
                z.writestr(f"PetImages/{folder}/{i}.jpg", _jpeg(rgb, i))
            z.writestr(f"PetImages/{folder}/Thumbs.db", b"\xd0\xcf\x11\xe0 thumbnails")
        for i in range(cats_vs_dogs._NUM_CORRUPT_IMAGES):
            folder = ("Cat", "Dog")[i % 2]
            z.writestr(f"PetImages/{folder}/{1000 + i}.jpg", b"" if i % 3 == 0 else b"GIF89a")


def _cifar_records(rng, n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    # Upstream's binary format: one label byte, then the red, green and blue planes.
    planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    return np.concatenate([labels[:, None], planes], axis=1).tobytes(), images, labels


def write_cifar10_tarball(path):
    """`cifar-10-binary.tar.gz` as upstream: `cifar-10-batches-bin/` with five
    `data_batch_N.bin`, `test_batch.bin`, `batches.meta.txt` and `readme.html`.

    Returns:
        `{"train": (images, labels), "test": (images, labels)}`, uint8 HWC images.
    """
    rng = np.random.default_rng(0)
    written = {"train": ([], []), "test": ([], [])}

    def add(tar, name, payload):
        info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    with tarfile.open(path, "w:gz") as tar:
        for name, split, n in [(f"data_batch_{i}.bin", "train", CIFAR_PER_BATCH) for i in range(1, 6)] + [
            ("test_batch.bin", "test", CIFAR_TEST)
        ]:
            payload, images, labels = _cifar_records(rng, n)
            add(tar, name, payload)
            written[split][0].append(images)
            written[split][1].append(labels)
        add(tar, "batches.meta.txt", ("\n".join(CIFAR_NAMES) + "\n\n").encode())
        add(tar, "readme.html", b"<html>CIFAR-10</html>")
    return {k: (np.concatenate(x), np.concatenate(y)) for k, (x, y) in written.items()}


# -------------------------------------------------------- server and patches


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The two archives, served on 127.0.0.1; yields their URLs and what the CIFAR one holds."""
    root = tmp_path_factory.mktemp("upstream")
    write_cats_vs_dogs_zip(root / "kagglecatsanddogs_5340.zip")
    cifar_written = write_cifar10_tarball(root / "cifar-10-binary.tar.gz")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {
        "base": base,
        "cats_vs_dogs": f"{base}/kagglecatsanddogs_5340.zip",
        "cifar10": f"{base}/cifar-10-binary.tar.gz",
        "cifar_written": cifar_written,
    }
    server.shutdown()
    server.server_close()


def _point_builder_at(monkeypatch, name, url):
    """The one mock: the builder downloads from `url` instead of upstream."""
    if name == "cats_vs_dogs":
        monkeypatch.setattr(cats_vs_dogs, "_URL", url)
    else:
        upstream_info = cifar.Cifar10._cifar_info.fget
        monkeypatch.setattr(
            cifar.Cifar10, "_cifar_info", property(lambda self: upstream_info(self)._replace(url=url))
        )


@pytest.fixture(scope="module")
def prepared(upstream, tmp_path_factory):
    """A data_dir where at2l_tf's loader had TFDS download and prepare both datasets."""
    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    with pytest.MonkeyPatch.context() as mp:
        for name in ("cats_vs_dogs", "cifar10"):
            _point_builder_at(mp, name, upstream[name])
            data.load(name, "test", data_dir=data_dir)  # Downloads, extracts, generates, caches.
    return data_dir


def _closed_port_url(filename):
    with socket.socket() as s:  # Bound, never listening, closed: nothing answers there.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{filename}"


def _arrays(ds):
    images, labels = zip(*[(x.numpy(), int(y)) for x, y in ds])
    return np.stack(images), np.array(labels)


# --------------------------------------------------------------------- tests


def test_cats_vs_dogs_builder_prepares_the_upstream_layout(prepared, upstream):
    builder = tfds.builder("cats_vs_dogs", data_dir=prepared)
    # The non-JPEG files, Thumbs.db, the pdf and the readme are dropped.
    assert builder.info.splits["train"].num_examples == CATS + DOGS
    # The download is cached under data_dir, with the URL it came from.
    cached = os.listdir(os.path.join(prepared, "downloads", "cats_vs_dogs"))
    assert [f.endswith(".zip") for f in sorted(cached)] == [True, False]  # The zip and its .INFO.
    info_file = os.path.join(prepared, "downloads", "cats_vs_dogs", sorted(cached)[1])
    assert json.loads(open(info_file).read())["urls"] == [upstream["cats_vs_dogs"]]
    sizes = {}
    for split in data.SPLITS:
        images, labels = _arrays(data.load("cats_vs_dogs", split, data_dir=prepared, image_size=16))
        sizes[split] = len(labels)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        # Label 0 = cat (red), 1 = dog (blue), through decoding and resizing.
        red_over_blue = images[..., 0].mean(axis=(1, 2)) > images[..., 2].mean(axis=(1, 2))
        assert (red_over_blue == (labels == 0)).all()
    assert sizes == {"train": 48, "validation": 6, "test": 6}


def test_cifar10_builder_prepares_the_upstream_layout(prepared, upstream):
    written = upstream["cifar_written"]
    info = tfds.builder("cifar10", data_dir=prepared).info
    assert info.splits["train"].num_examples == 5 * CIFAR_PER_BATCH
    assert info.splits["test"].num_examples == CIFAR_TEST
    assert info.features["label"].names == CIFAR_NAMES  # From batches.meta.txt.

    def as_set(images, labels):
        return sorted((img.tobytes(), int(y)) for img, y in zip(images, labels))

    train = _arrays(data.load("cifar10", "train", data_dir=prepared, validation_size=8))
    val = _arrays(data.load("cifar10", "validation", data_dir=prepared, validation_size=8))
    test = _arrays(data.load("cifar10", "test", data_dir=prepared, validation_size=8))
    assert (len(train[1]), len(val[1]), len(test[1])) == (32, 8, CIFAR_TEST)
    to_uint8 = lambda images: np.round(images * 255).astype(np.uint8)  # noqa: E731
    # Every written image with its label, once: validation and train are disjoint and cover train.
    both = (np.concatenate([to_uint8(train[0]), to_uint8(val[0])]), np.concatenate([train[1], val[1]]))
    assert as_set(*both) == as_set(*written["train"])
    assert as_set(to_uint8(test[0]), test[1]) == as_set(*written["test"])
    # The validation cut follows the prepared split's size, not upstream's 50,000.
    with pytest.raises(DatasetError, match=re.escape(
        "validation_size must be in [0, 40) (cifar10 has 40 training examples), "
        "received validation_size=5000"
    )):
        data.load("cifar10", "train", data_dir=prepared)


def test_prepared_data_is_read_without_network(prepared, monkeypatch):
    for name in ("cats_vs_dogs", "cifar10"):
        _point_builder_at(monkeypatch, name, _closed_port_url("gone"))
        assert len(list(data.load(name, "test", data_dir=prepared, max_examples=3))) == 3


def test_cats_vs_dogs_command_trains_evaluates_and_exports(prepared, tmp_path):
    work, export = tmp_path / "run", tmp_path / "export"
    train = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--dataset=cats_vs_dogs", f"--data_dir={prepared}",
         "--image_size=16", "--batch_size=8", "--max_train_examples=16", "--epochs=1",
         "--attack=fgsm", "--eval_attacks=fgsm", "--eval_examples=6", "--mixed_precision=off",
         "--verbose=0", f"--workdir={work}", f"--export_dir={export}"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert results["test"]["num_examples"] == 6 and len(results["history"]["loss"]) == 1
    assert results["history"]["triplet"]  # AT²L, the default: in-batch negatives of the other label.

    evaluate = subprocess.run(
        [sys.executable, "-m", "at2l_tf.evaluate", f"--model_dir={export / '1'}",
         f"--data_dir={prepared}", "--attacks=fgsm", "--num_examples=6",
         f"--output_json={tmp_path / 'eval.json'}"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["dataset"] == "cats_vs_dogs" and report["num_examples"] == 6
    assert report["clean_accuracy"] == pytest.approx(results["test"]["clean_accuracy"])

    # The SavedModel answers on the prepared test images as the trained model did.
    loaded = savedmodel.load_classifier(str(export))
    assert loaded.metadata["dataset"] == "cats_vs_dogs" and loaded.input_shape == (16, 16, 3)
    images, labels = _arrays(data.load("cats_vs_dogs", "test", data_dir=prepared, image_size=16))
    logits = np.asarray(loaded.model_fn(images))
    assert logits.shape == (6, 2)
    assert np.mean(logits.argmax(axis=1) == labels) == pytest.approx(report["clean_accuracy"])


def test_cifar10_command_trains_one_epoch(prepared, tmp_path):
    work = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--dataset=cifar10", f"--data_dir={prepared}",
         "--validation_size=8", "--batch_size=8", "--epochs=1", "--attack=fgsm",
         "--eval_attacks=fgsm", "--eval_examples=10", "--mixed_precision=off", "--verbose=0",
         f"--workdir={work}", "--export_dir="],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert results["test"]["num_examples"] == CIFAR_TEST and len(results["history"]["loss"]) == 1
    assert "val_adv_acc" in results["history"]  # The 8-image validation cut was used.


@pytest.mark.parametrize("name, filename", [
    ("cats_vs_dogs", "kagglecatsanddogs_5340.zip"), ("cifar10", "cifar-10-binary.tar.gz")
])
def test_unreachable_url_fails_at_the_network_and_the_error_names_it(name, filename, tmp_path, monkeypatch):
    url = _closed_port_url(filename)
    _point_builder_at(monkeypatch, name, url)
    # TFDS retries a refused connection 10 times with exponential back-off (~200 s);
    # once is enough to see where it fails.
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    with pytest.raises(requests.ConnectionError) as raw:  # The network, not an import.
        tfds.builder(name, data_dir=str(tmp_path / "raw")).download_and_prepare()
    assert not any(isinstance(e, ImportError) for e in _chain(raw.value))

    with pytest.raises(DatasetError) as info:
        data.load(name, "train", data_dir=str(tmp_path / "tfds"))
    assert str(info.value) == (
        f"{name} is not prepared in {tmp_path / 'tfds'} and {url} could not be downloaded: "
        f"[Errno 111] Connection refused; prepare it on a machine with network with "
        f"`tfds build {name} --data_dir=DIR`, copy DIR here and pass --data_dir=DIR"
    )


def test_an_http_error_names_the_url(upstream, tmp_path, monkeypatch):
    url = f"{upstream['base']}/no-such-file.tar.gz"  # The live server answers 404.
    _point_builder_at(monkeypatch, "cifar10", url)
    with pytest.raises(DatasetError, match=re.escape(f"Failed to get url {url}. HTTP code: 404.")) as info:
        data.load("cifar10", "train", data_dir=str(tmp_path))
    assert "\n" not in str(info.value) and "tfds build cifar10 --data_dir=DIR" in str(info.value)


def test_a_download_with_the_wrong_checksum_is_one_line(upstream, tmp_path, monkeypatch):
    # TFDS validates the checksum of a URL it has registered (upstream's are): register the
    # served URL's with a wrong checksum, as for a corrupted download (the second mock here).
    url = upstream["cifar10"]
    _point_builder_at(monkeypatch, "cifar10", url)
    wrong = checksums.UrlInfo(size=tfds.core.utils.Size(1), checksum="0" * 64, filename="x.tar.gz")
    monkeypatch.setattr(cifar.Cifar10, "url_infos", {url: wrong})
    with pytest.raises(DatasetError) as info:
        data.load("cifar10", "train", data_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"cannot prepare cifar10: Artifact {url}, downloaded to ")
    assert "has wrong checksum: * Expected: UrlInfo(size=1 bytes, checksum='000" in message
    assert "\n" not in message, message


def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    data_dir = tmp_path / "file" / "tfds"  # Below a file: no directory can be made, even by root.
    with pytest.raises(DatasetError) as info:
        data.load("cifar10", "train", data_dir=str(data_dir))
    assert str(info.value) == (
        f"cannot prepare cifar10 in {data_dir}: [Errno 20] Not a directory: '{data_dir}'"
    )


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


# The train command as users run it (`python -m at2l_tf.train`), after a patch.
_PATCHED_TRAIN = """
import runpy, sys
{patch}
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("at2l_tf.train", run_name="__main__", alter_sys=True)
"""


def _train_command(patch, *args):
    return subprocess.run(
        [sys.executable, "-c", _PATCHED_TRAIN.format(patch=patch), *args],
        capture_output=True, text=True, env=ENV, timeout=300,
    )


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("train: error:")]


def test_the_command_names_an_unreachable_url_in_one_line(tmp_path):
    url = _closed_port_url("kagglecatsanddogs_5340.zip")
    patch = (
        "from tensorflow_datasets.image_classification import cats_vs_dogs\n"
        f"cats_vs_dogs._URL = {url!r}  # Mocked: upstream's URL -> a closed loopback port.\n"
        "from tensorflow_datasets.core.download import downloader\n"
        "downloader.MAX_RETRIES = 0  # Mocked: no ~200 s of retries.\n"
    )
    run = _train_command(patch, "--dataset=cats_vs_dogs", f"--data_dir={tmp_path / 'tfds'}",
                         f"--workdir={tmp_path / 'w'}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert _errors(run.stderr) == [
        f"train: error: cats_vs_dogs is not prepared in {tmp_path / 'tfds'} and {url} could not be "
        f"downloaded: [Errno 111] Connection refused; prepare it on a machine with network with "
        f"`tfds build cats_vs_dogs --data_dir=DIR`, copy DIR here and pass --data_dir=DIR"
    ]
    assert "Traceback" not in run.stderr and not (tmp_path / "w").exists()


def test_a_module_tfds_cannot_import_is_named_with_its_pip_command(tmp_path):
    # Simulated: `None` in sys.modules makes every `import importlib_resources` fail as on a
    # machine without it (the module is installed here); TFDS's own code raises the error.
    patch = 'sys.modules["importlib_resources"] = None'
    run = _train_command(patch, "--dataset=cats_vs_dogs", f"--data_dir={tmp_path / 'tfds'}",
                         f"--workdir={tmp_path / 'w'}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert _errors(run.stderr) == [
        "train: error: cannot prepare cats_vs_dogs: TFDS needs the Python module "
        "'importlib_resources', which is not installed; install it with "
        "`pip install importlib_resources`"
    ]
    assert "Traceback" not in run.stderr and not (tmp_path / "w").exists()
