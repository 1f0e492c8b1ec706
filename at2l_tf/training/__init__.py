"""Training: the `AT2LModel` (custom `train_step`), its objectives (`objectives`:
AT, TRADES, MART, clean), the triplet term on top of them (`TripletRegularizer`)
and the penultimate features it may use (`embedding`)."""

from at2l_tf.training import embedding, objectives
from at2l_tf.training.at2l_model import AT2LModel
from at2l_tf.training.objectives import CHOICES as OBJECTIVES
from at2l_tf.training.triplet_regularizer import TripletRegularizer

__all__ = ["OBJECTIVES", "AT2LModel", "TripletRegularizer", "embedding", "objectives"]
