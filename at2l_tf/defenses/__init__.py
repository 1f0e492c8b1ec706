"""Defence layers: preprocessing placed in front of a classifier.

Each layer masks gradients in its own way and names the adaptive attack that
evaluates it honestly:

* `ThermometerEncoding` (Buckman et al., 2018): zero gradients; attack with BPDA
  (`at2l_tf.attacks.bpda`) or LS-PGA (`at2l_tf.attacks.ls_pga`).
* `RandomResizePad` (Xie et al., 2018): random at inference; attack with EOT
  (`at2l_tf.attacks.eot`).
* `DefenseGANProjection` (Samangouei et al., 2018): an inner optimisation onto
  a generator's range, random starts; attack with BPDA, identity backward
  (`at2l_tf.attacks.bpda`).

("Defence" here names a layer; the training objective is chosen separately.)
"""

from at2l_tf.defenses.compose import PREPROCESSING, defended_model, make_layer, split
from at2l_tf.defenses.defense_gan import DefenseGANProjection
from at2l_tf.defenses.random_resize_pad import RandomResizePad
from at2l_tf.defenses.thermometer import ThermometerEncoding

__all__ = [
    "PREPROCESSING", "DefenseGANProjection", "RandomResizePad", "ThermometerEncoding", "defended_model", "make_layer", "split"
]
