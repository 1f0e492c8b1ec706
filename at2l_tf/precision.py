"""Training precision: which Keras mixed-precision policy a run trains under, and why.

`keras.mixed_precision` computes in a 16-bit type and keeps the variables in
float32. Two policies matter here:

* `mixed_bfloat16`: bfloat16 has float32's exponent range, so no loss scaling
  is needed. oneDNN runs it natively on CPUs whose flags list `avx512_bf16` or
  `amx_bf16` (measured on such an AMD EPYC: PGD-10 adversarial training steps
  1.5–1.8× faster, `benchmarks/speed.py --family=precision`); elsewhere it is emulated
  and usually *slower* than float32.
* `mixed_float16`: for GPUs of compute capability >= 7.0 (tensor cores); its
  narrow range needs loss scaling (`keras.mixed_precision.LossScaleOptimizer`,
  see `wrap_optimizer`). On a CPU it is emulated: slower.

Choices (`--mixed_precision` of `train`, `tune`, `train_gan`):

* `auto`: float16 on a GPU of compute capability >= 7.0, bfloat16 on a CPU
  with native bfloat16, float32 otherwise (`resolve`, given a `Hardware`);
* `off` (float32), `bfloat16`, `float16`: as said; a choice the hardware runs
  slowly gets one warning line, then runs.

Numerics kept exact where they matter (the training code's job, tested):

* the classifier's last layer (`logits`) computes in float32, as Keras
  recommends, and every loss casts logits to float32 first;
* the training attack's input, step and projection stay float32 (the images
  are float32; only the layers compute in 16 bits), so the eps-ball is exact;
* **evaluation and serving are float32**: `to_float32` rebuilds a model under
  the float32 policy with the same weights, which the train command does
  before `model.keras`, the final robustness check and the export, and which
  `savedmodel.export_saved_model` and `evaluate` apply to any model they get.
  No reported robustness and no served prediction depends on reduced precision.

The policy is decided once, in the strategy phase of `experiment.run`, and
applied with `policy_scope` around the building of the network only.
"""

import contextlib
import dataclasses
from typing import Optional

import keras

CHOICES = ("auto", "off", "bfloat16", "float16")
POLICY_OF = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_FLOAT16_CAPABILITY = (7, 0)


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What decides the policy: the CPU (model and flags) and the GPUs.

    Attributes:
        cpu_model: e.g. "AMD EPYC 9R14" (for messages only).
        cpu_flags: the CPU's feature flags (`/proc/cpuinfo`'s `flags`).
        gpus: one `(name, compute_capability)` per visible GPU; the capability
            is a `(major, minor)` tuple, or None when TensorFlow does not say.
    """

    cpu_model: str = "unknown CPU"
    cpu_flags: frozenset = frozenset()
    gpus: tuple = ()

    @property
    def native_bf16(self):
        """The CPU flags that give native bfloat16 (empty tuple: none)."""
        return tuple(f for f in NATIVE_BF16_FLAGS if f in self.cpu_flags)

    @property
    def float16_gpu(self):
        """The first GPU of compute capability >= 7.0, as `(name, capability)`, or None."""
        for name, capability in self.gpus:
            if capability is not None and tuple(capability) >= MIN_FLOAT16_CAPABILITY:
                return name, tuple(capability)
        return None


def detect_hardware():
    """The `Hardware` of this machine (Linux `/proc/cpuinfo`, TensorFlow's GPU list)."""
    model, flags = "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model != "unknown CPU" and flags:
                    break
    except OSError:
        pass
    gpus = []
    import tensorflow as tf  # Local: the pure resolution needs no TensorFlow.

    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        gpus.append((details.get("device_name", device.name), details.get("compute_capability")))
    return Hardware(model, flags, tuple(gpus))


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved choice.

    Attributes:
        choice: what was asked (`auto`, `off`, `bfloat16`, `float16`).
        policy: the Keras policy name: `float32`, `mixed_bfloat16` or `mixed_float16`.
        reason: why, in words (the run's first line says it).
        warning: one line when the hardware will likely run `policy` slower
            than float32, else None.
    """

    choice: str
    policy: str
    reason: str
    warning: Optional[str] = None

    @property
    def mixed(self):
        return self.policy != "float32"

    def describe(self):
        return f"precision: {self.policy} (--mixed_precision={self.choice}: {self.reason})"

    def to_dict(self):
        return dataclasses.asdict(self)


def check_choice(choice):
    """Raises `ValueError` naming `choice` unless it is one of `CHOICES`."""
    if choice not in CHOICES:
        raise ValueError(
            f"unknown mixed_precision {choice!r}; known: {', '.join(CHOICES)}"
        )


def resolve(choice, hardware=None):
    """The `Precision` of `choice` on `hardware` (default: this machine's).

    Args:
        choice: one of `CHOICES`.
        hardware: a `Hardware`; inject one to decide for another machine (tests do).

    Raises:
        ValueError: an unknown choice (one line naming it).
    """
    check_choice(choice)
    hw = detect_hardware() if hardware is None else hardware
    gpu = hw.float16_gpu
    native = hw.native_bf16
    if choice == "auto":
        if gpu is not None:
            return Precision(choice, "mixed_float16", f"GPU {gpu[0]} of compute capability "
                             f"{gpu[1][0]}.{gpu[1][1]} >= 7.0")
        if native:
            return Precision(choice, "mixed_bfloat16", f"{hw.cpu_model} has native bfloat16 "
                             f"({', '.join(native)})")
        why = f"{hw.cpu_model} has no native bfloat16 (no {' or '.join(NATIVE_BF16_FLAGS)})"
        if hw.gpus:
            why = "no GPU of compute capability >= 7.0 and " + why
        return Precision(choice, "float32", why)
    if choice == "off":
        return Precision(choice, "float32", "asked for")
    if choice == "float16":
        warning = None
        if gpu is None:
            warning = (
                "--mixed_precision=float16 without a GPU of compute capability >= 7.0: "
                "float16 is emulated here and will likely be slower than float32"
            )
        return Precision(choice, "mixed_float16", "asked for", warning)
    warning = None
    if not native and not hw.gpus:
        warning = (
            f"--mixed_precision=bfloat16 on {hw.cpu_model}, which has no native bfloat16 "
            f"(no {' or '.join(NATIVE_BF16_FLAGS)}): it is emulated and will likely be slower"
        )
    return Precision(choice, "mixed_bfloat16", "asked for", warning)


@contextlib.contextmanager
def policy_scope(policy):
    """Sets Keras' global dtype policy to `policy` inside the block, then restores it.

    Layers take the global policy when they are *constructed*: build the
    network inside the block, everything else (the wrapper, metrics, the
    optimizer) outside it.
    """
    name = policy.policy if isinstance(policy, Precision) else str(policy)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer, policy):
    """`optimizer` wrapped in a `LossScaleOptimizer` for `mixed_float16`, else itself.

    float16's range is too narrow for small gradients: the loss is scaled up
    before differentiation (`optimizer.scale_loss`, which `AT2LModel.train_step`
    calls) and the gradients scaled back down. bfloat16 needs none.
    """
    name = policy.policy if isinstance(policy, Precision) else str(policy)
    if name == "mixed_float16" and not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def policies_of(model):
    """The set of dtype-policy names of `model`'s layers (nested models included)."""
    found = set()
    for layer in _all_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            found.add(policy.name)
    return found


def is_float32(model):
    """True when every layer of `model` computes and stores in float32."""
    return policies_of(model) <= {"float32"}


def to_float32(model):
    """`model` itself if it is all float32, else a float32 copy with the same weights.

    The copy is rebuilt from the model's serialized configuration with every
    layer's dtype policy replaced by `float32` (nested models and defence
    layers included), so its variables, computations and outputs are float32
    and its SavedModel is indistinguishable in dtype from a float32 run's.
    Mixed-precision variables are float32 already: the weights copy exactly.
    """
    if is_float32(model):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(obj):
    """A serialized Keras object with every dtype policy made `float32`."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    if isinstance(obj, str) and obj in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):
        return "float32"  # A policy given by name (`dtype="mixed_bfloat16"`).
    return obj


def _all_layers(model):
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])


ATTACK_CHOICES = ("float32", "bfloat16", "auto")


def resolve_attack_precision(choice, hardware=None):
    """The `Precision` the attacks of an evaluation search in (`--attack_precision`).

    `float32`; `bfloat16` (asked for: one warning line on a CPU without native
    bfloat16, where it is emulated and slower); `auto`: bfloat16 on a CPU with
    native bfloat16 (`avx512_bf16`, `amx_bf16`), else float32 (a GPU's
    float16 is not offered: its range needs loss scaling, which an attack's
    gradient does not have). The verdicts are float32 whatever this says
    (`attacks.search`).

    Raises:
        ValueError: an unknown choice (one line naming it).
    """
    if choice not in ATTACK_CHOICES:
        raise ValueError(
            f"attack_precision must be one of {', '.join(ATTACK_CHOICES)}, "
            f"received attack_precision={choice!r}"
        )
    if choice == "float32":
        return Precision(choice, "float32", "asked for")
    hw = detect_hardware() if hardware is None else hardware
    native = hw.native_bf16
    if choice == "auto":
        if native:
            return Precision(choice, "mixed_bfloat16", f"{hw.cpu_model} has native bfloat16 "
                             f"({', '.join(native)})")
        return Precision(choice, "float32", f"{hw.cpu_model} has no native bfloat16 "
                         f"(no {' or '.join(NATIVE_BF16_FLAGS)})")
    warning = None
    if not native:
        warning = (
            f"--attack_precision=bfloat16 on {hw.cpu_model}, which has no native bfloat16 "
            f"(no {' or '.join(NATIVE_BF16_FLAGS)}): it is emulated and will likely be slower"
        )
    return Precision(choice, "mixed_bfloat16", "asked for", warning)


def search_copy(model, policy="mixed_bfloat16"):
    """A copy of the Keras network `model` computing under `policy`, with the same weights.

    For attacks that search in reduced precision (`attacks.search`): every
    layer is rebuilt under `policy` except the input and the `logits` layer,
    which stays float32 (as the package's models build it), and the weights
    are copied (mixed-precision variables are float32: they copy exactly).
    Give it the network behind a defence layer (`defenses.split`): the layer,
    whose numerics are the defence, stays float32 in front of the copy.
    """
    name = policy.policy if isinstance(policy, Precision) else str(policy)

    def rebuild(layer):
        config = layer.get_config()
        if layer.name != "logits" and not isinstance(layer, keras.layers.InputLayer):
            config = dict(config, dtype=name)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def summary_line(precision, hardware=None):
    """A JSON-able record of the decision for `results.json`."""
    hw = hardware or detect_hardware()
    return {
        **precision.to_dict(),
        "cpu_model": hw.cpu_model,
        "cpu_native_bf16": list(hw.native_bf16),
        "gpus": [[name, list(c) if c else None] for name, c in hw.gpus],
    }


__all__ = [
    "ATTACK_CHOICES",
    "CHOICES",
    "Hardware",
    "Precision",
    "check_choice",
    "detect_hardware",
    "is_float32",
    "policies_of",
    "policy_scope",
    "resolve",
    "resolve_attack_precision",
    "search_copy",
    "summary_line",
    "to_float32",
    "wrap_optimizer",
]
