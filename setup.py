"""Packaging of at2l_tf. `pip install -e .` (CPU), `.[cuda]` (GPU), `.[test]` (pytest)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "at2l_tf" / "__init__.py").read_text()
).group(1)

setup(
    name="at2l_tf",
    version=VERSION,
    description=(
        "Adversarial training with triplet loss (AT2L, Li et al., IJCAI 2019) for Keras 3 / "
        "TensorFlow, with strong-attack robustness evaluation"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["at2l_tf", "at2l_tf.*"]),
    package_data={"at2l_tf": ["resources/mnist/*"]},
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.16",  # Keras 3
        "keras>=3.0",
        "tensorflow-datasets>=4.9",
        # TFDS 4.9 builders import it when they prepare a dataset but declare it only for
        # Python < 3.9 (tensorflow/datasets#11212); etils[epath] (1.15) does not bring it either.
        "importlib_resources",
        "cleverhans>=4.0",
        "keras-tuner>=1.4",
        "absl-py>=1.0",
        "tensorboard",  # TensorFlow 2.21 no longer pulls it in; the TensorBoard callback needs it.
        "numpy",
        "matplotlib",  # Robustness curves (evaluate --eps_sweep).
    ],
    extras_require={
        "cuda": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=7"],
        # Foolbox pulls in eagerpy, through which it runs TensorFlow.
        "bench": ["adversarial-robustness-toolbox==1.20.*", "foolbox==3.3.*", "psutil"],
    },
)
