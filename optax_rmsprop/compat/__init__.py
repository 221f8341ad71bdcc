"""Framework-exact RMSProp: each function takes the framework's own arguments.

A port is a copy of the original call::

  torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, momentum=0.9)
  optax_rmsprop.compat.pytorch(lr=1e-3, alpha=0.9, momentum=0.9)

and the returned transformation, applied with ``optax.apply_updates``, follows
the original's parameter trajectory step for step (verified against the real
frameworks: see ``tests/test_compat.py``).
"""

from optax_rmsprop.compat._keras import KerasRMSpropState as KerasRMSpropState
from optax_rmsprop.compat._keras import keras as keras
from optax_rmsprop.compat._keras import keras_legacy as keras_legacy
from optax_rmsprop.compat._pytorch import PyTorchRMSpropState as PyTorchRMSpropState
from optax_rmsprop.compat._pytorch import pytorch as pytorch
from optax_rmsprop.compat._tensorflow import TFRMSPropState as TFRMSPropState
from optax_rmsprop.compat._tensorflow import tensorflow_v1 as tensorflow_v1
from optax_rmsprop.compat._timm import timm as timm
from optax_rmsprop.compat._torch_state import from_pytorch_state as from_pytorch_state
from optax_rmsprop.compat._torch_state import to_pytorch_state as to_pytorch_state

__all__ = [
    "KerasRMSpropState",
    "PyTorchRMSpropState",
    "TFRMSPropState",
    "from_pytorch_state",
    "keras",
    "keras_legacy",
    "pytorch",
    "tensorflow_v1",
    "timm",
    "to_pytorch_state",
]
