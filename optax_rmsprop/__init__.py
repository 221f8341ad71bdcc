"""optax_rmsprop: RMSProp for JAX as a composable Optax GradientTransformation."""

from optax_rmsprop import compat as compat
from optax_rmsprop import recipes as recipes
from optax_rmsprop._dequantize import dequantize_state as dequantize_state
from optax_rmsprop._diagnostics import effective_step_size as effective_step_size
from optax_rmsprop._param_rounding import ParamRoundingState as ParamRoundingState
from optax_rmsprop._param_rounding import param_rounding as param_rounding
from optax_rmsprop._rmsprop import rmsprop as rmsprop
from optax_rmsprop._scale_by_rms import scale_by_rms as scale_by_rms
from optax_rmsprop._state import RMSPropState as RMSPropState
from optax_rmsprop._state import ScaleByRmsState as ScaleByRmsState

__version__ = "0.4.1"

__all__ = [
    "compat",
    "recipes",
    "ParamRoundingState",
    "RMSPropState",
    "ScaleByRmsState",
    "dequantize_state",
    "effective_step_size",
    "param_rounding",
    "rmsprop",
    "scale_by_rms",
]
