"""at2l_tf: adversarial training with triplet loss (AT²L) for Keras 3 / TensorFlow.

Li, Yi, Zhou, Zhang, "Improving the Robustness of Deep Neural Networks via
Adversarial Training with Triplet Loss", IJCAI 2019 (arXiv:1905.11713).

Subpackages: `data` (datasets), `models` (architectures by name), `attacks`
(attacks as functions), `losses` (the triplet loss), `training` (the AT2LModel).
"""

import os

# Hide TensorFlow's C++ start-up notices (CUDA probing on CPU machines, oneDNN);
# set TF_CPP_MIN_LOG_LEVEL=0 to see them again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Use TensorFlow's oneDNN kernels and graph fusions on the CPU. TensorFlow turns
# them on by itself only on CPUs with AVX512-VNNI/BF16 or AMX; this makes AVX2-only
# CPUs use them too. How much they buy: benchmarks/results/profile_attacks_cpu.json
# against profile_attacks_cpu_eigen.json (the same command with
# TF_ENABLE_ONEDNN_OPTS=0): PGD-10 on a batch of 128 for the Madry MNIST CNN took
# 227 ms with oneDNN, 615 ms with the Eigen kernels, on the AVX-512 machine of
# those files. Results may differ from the Eigen kernels in the last bits of float32
# round-off. TensorFlow reads the variable once, when it loads: it takes effect when
# at2l_tf is imported before tensorflow (the `python -m at2l_tf.*` commands always
# are). Set TF_ENABLE_ONEDNN_OPTS=0 to keep the Eigen kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
