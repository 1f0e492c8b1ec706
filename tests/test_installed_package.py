"""The package as pip installs it, not the checkout.

CI installs the project in editable mode, so every other test imports the
checkout's `at2l_tf`. These tests build the wheel a user's `pip install` builds,
install it (without dependencies: they are the test environment's) into a
folder of its own, and run it from outside the checkout, so that a module or a
data file missing from the wheel, or a dependency it does not declare, fails
here rather than on a user's machine. Nothing is mocked.
"""

import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`(site, wheel)`: the wheel built from a copy of the sources, and the
    folder it is installed in."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "at2l_tf"), src / "at2l_tf",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: setuptools from this environment, no download.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("at2l_tf-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, cwd=tmp)
    return site, wheel


def _run(site, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(site))  # Ahead of the checkout's editable install.
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_declares_what_tfds_real_builders_import(installed):
    """TFDS 4.9 imports importlib_resources to prepare cats_vs_dogs and cifar10 but
    declares it only for Python < 3.9: the wheel must require it itself."""
    _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(z.read(meta)).get_all("Requires-Dist")
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower() for r in requires}
    assert {"importlib-resources", "tensorflow-datasets", "keras-tuner", "cleverhans"} <= {
        n.replace("_", "-") for n in names
    }


def test_every_module_and_the_shipped_mnist_are_in_the_wheel(installed):
    _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("at2l_tf/")}
    in_checkout = {
        os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
        for d, _, files in os.walk(os.path.join(ROOT, "at2l_tf"))
        for f in files
        if f.endswith(".py") or "resources" in d
    }
    in_checkout = {p for p in in_checkout if "__pycache__" not in p}
    assert in_checkout - shipped == set()


def test_the_installed_package_trains_on_its_own_mnist_outside_the_checkout(installed, tmp_path):
    site, _ = installed
    where = _run(site, "-c", "import at2l_tf, at2l_tf.data as d; print(at2l_tf.__file__); print(d.mnist_dir())",
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    module, mnist = where.stdout.split()
    assert module.startswith(str(site)) and mnist.startswith(str(site))
    run = _run(
        site, "-m", "at2l_tf.train", "--max_train_examples=256", "--batch_size=64", "--epochs=1",
        "--attack_steps=1", "--eval_examples=64", "--eval_attacks=fgsm", "--validation_size=64",
        "--mixed_precision=off", f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "worst case" in run.stdout
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
