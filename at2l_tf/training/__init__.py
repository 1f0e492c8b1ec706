"""Training: the `AT2LModel` (custom `train_step`) and its triplet layer."""

from at2l_tf.training.at2l_model import DEFENSES, AT2LModel
from at2l_tf.training.triplet_regularizer import TripletRegularizer

__all__ = ["DEFENSES", "AT2LModel", "TripletRegularizer"]
