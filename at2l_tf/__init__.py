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

__version__ = "0.1.0"
