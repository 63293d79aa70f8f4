"""Optimizer and learning-rate schedule of the reference recipes.

* `PolyLR`: lr = base * (1 - step / total) ** 0.9, evaluated every step, with an optional linear
  warmup; a `keras.optimizers.schedules.LearningRateSchedule`, so the step is the optimizer's
  own `iterations` counter and a restored checkpoint resumes the schedule where it was.
* `SGD`: PyTorch's `torch.optim.SGD(momentum=0.9, weight_decay=wd)` exactly:
      g <- g + wd * w            (L2 weight decay added to the gradient, before momentum)
      buf <- momentum * buf + g  (buf = g on the first step)
      w <- w - lr * mult * buf
  Keras' built-in `SGD(weight_decay=...)` is different on two counts: its decay is decoupled
  (w -= lr * wd * w, outside the momentum) and its momentum buffer accumulates lr-scaled
  gradients, which drifts from PyTorch when the LR changes every step. So the update is
  written out here (`update_step`), and `weight_decay` is not passed to the Keras base class.
  `mult` is the head LR multiplier of [HR] (`NONBACKBONE_MULT`), applied to every variable of the
  head: every registered model names its head layer "head", so a variable belongs to it when its
  path starts with "head/" (structural, unlike [HR]'s name substrings cls/aux/ocr, which miss most
  of the PPM, ASPP and FCN heads' variables).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ocr_tf")
class PolyLR(keras.optimizers.schedules.LearningRateSchedule):
    """base_lr * (1 - min(step, total) / total) ** power; during the first `warmup_steps` steps
    that value is multiplied by a factor rising linearly from `warmup_factor` to 1."""

    def __init__(self, base_lr, total_steps, power=0.9, warmup_steps=0, warmup_factor=0.1, end_lr=0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps), got {warmup_steps}.")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.end_lr = float(end_lr)

    def __call__(self, step):
        # keras.ops, so that the schedule runs inside a JAX / PyTorch train step as well.
        step = ops.cast(step, "float32")
        frac = ops.minimum(step, float(self.total_steps)) / float(self.total_steps)
        lr = (self.base_lr - self.end_lr) * ops.power(1.0 - frac, self.power) + self.end_lr
        if self.warmup_steps > 0:
            alpha = ops.minimum(step / float(self.warmup_steps), 1.0)
            lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * alpha)
        return lr

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            power=self.power,
            warmup_steps=self.warmup_steps,
            warmup_factor=self.warmup_factor,
            end_lr=self.end_lr,
        )


@keras.saving.register_keras_serializable(package="ocr_tf")
class SGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay with PyTorch semantics, plus a head LR multiplier.

    Args:
        learning_rate: float or schedule (e.g. `PolyLR`).
        momentum: momentum factor (0.9 in every recipe).
        weight_decay: L2 coefficient added to the gradient (PyTorch `weight_decay`), applied to
            every trainable variable as the reference does.
        head_lr_multiplier: LR factor of the head's variables.
        head_layers: names of the top-level layers whose variables get the multiplier.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=0.0,
        head_lr_multiplier=1.0,
        head_layers=("head",),
        name="sgd",
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.momentum = float(momentum)
        self.l2_weight_decay = float(weight_decay)
        self.head_lr_multiplier = float(head_lr_multiplier)
        self.head_layers = tuple(head_layers)

    def is_head_variable(self, variable):
        path = getattr(variable, "path", variable.name)
        return path.split("/", 1)[0] in self.head_layers

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [
            self.add_variable_from_reference(v, "momentum") if self.momentum else None for v in variables
        ]
        self._lr_multipliers = [
            self.head_lr_multiplier if self.is_head_variable(v) else 1.0 for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype) * ops.cast(self._lr_multipliers[index], dtype)
        gradient = ops.cast(gradient, dtype)
        if self.l2_weight_decay:
            gradient = gradient + ops.cast(self.l2_weight_decay, dtype) * variable
        if self.momentum:
            buf = self.momentums[index]
            # PyTorch initialises the buffer with the first gradient; m * 0 + g is the same.
            new_buf = ops.cast(self.momentum, dtype) * buf + gradient
            self.assign(buf, new_buf)
            self.assign_sub(variable, lr * new_buf)
        else:
            self.assign_sub(variable, lr * gradient)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            weight_decay=self.l2_weight_decay,
            head_lr_multiplier=self.head_lr_multiplier,
            head_layers=list(self.head_layers),
        )
        return config


def build_optimizer(train_config):
    """`SGD` + `PolyLR` from a `TrainConfig`."""
    schedule = PolyLR(
        train_config.lr,
        train_config.iterations,
        power=train_config.power,
        warmup_steps=train_config.warmup_steps,
        warmup_factor=train_config.warmup_factor,
    )
    return SGD(
        learning_rate=schedule,
        momentum=train_config.momentum,
        weight_decay=train_config.weight_decay,
        head_lr_multiplier=train_config.head_lr_multiplier,
        head_layers=train_config.head_layers,
    )
