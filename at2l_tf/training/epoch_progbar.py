"""The per-epoch progress line of a run trained one `fit` call per epoch."""

import keras


class EpochProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras' `ProgbarLogger`, its `Epoch k/N` header counting the whole run.

    A run that calls `fit(initial_epoch=e, epochs=e + 1)` once per epoch (to
    resume mid-epoch and to back itself up between epochs) would otherwise get
    `Epoch 2/2`, `Epoch 3/3`, ... from Keras, and no header for the first
    epoch (Keras prints one only when `epochs > 1`). Given to `fit` among its
    callbacks, this logger replaces Keras' own (Keras adds one only when the
    callbacks hold none) and prints `Epoch e+1/total_epochs`, at every
    verbosity Keras prints it (1 and 2), resumed runs included.

    Args:
        total_epochs: the run's epochs, N in `Epoch k/N`.
    """

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = int(total_epochs)

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs
