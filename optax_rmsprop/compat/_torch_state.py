"""Moving RMSprop state between a PyTorch run and a JAX one."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop._tree import Tree
from optax_rmsprop.compat._pytorch import PyTorchRMSpropState

_SLOTS = ("square_avg", "grad_avg", "momentum_buffer")
# torch.optim.RMSprop's param-group defaults; load_state_dict replaces the group whole.
TORCH_DEFAULTS = dict(
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    capturable=False,
    foreach=None,
    maximize=False,
    differentiable=False,
)


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a torch tensor (or array): never a view of the optimizer's memory.

    ``Tensor.numpy()`` shares the tensor's buffer, and ``jnp.asarray`` may keep
    sharing it on CPU; a later ``optimizer.step()`` would then change the JAX
    state in place. The copy is what makes the converted state a value.
    """
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().resolve_conj().numpy()
    return np.array(x, copy=True)


def from_pytorch_state(state_dict: dict, params: Tree) -> PyTorchRMSpropState:
    """The :func:`pytorch` state equivalent to ``torch.optim.RMSprop.state_dict()``.

    The i-th torch parameter (in the order given to the optimizer) is the i-th
    leaf of ``params`` in ``jax.tree.leaves`` order. Shapes must match exactly:
    transpose torch layouts (e.g. conv ``OIHW``) into your params' layout first.

    Args:
      state_dict: ``optimizer.state_dict()`` of a ``torch.optim.RMSprop`` with
        one param group, after at least one step.
      params: the JAX params the state belongs to.

    Returns:
      A :class:`PyTorchRMSpropState` for ``compat.pytorch(...)`` with the same
      hyperparameters (``centered`` and ``momentum`` decide which slots exist).
      Its arrays are copies: later torch steps, which work in place, leave it
      unchanged.

    Raises:
      ValueError: if the parameter count, a shape, or the slots do not match.
    """
    leaves, treedef = jax.tree.flatten(params)
    groups = state_dict.get("param_groups", [])
    if len(groups) != 1:
        raise ValueError(f"from_pytorch_state: expected 1 param group, found {len(groups)}.")
    ids = list(groups[0]["params"])
    if len(ids) != len(leaves):
        raise ValueError(
            f"from_pytorch_state: the torch optimizer has {len(ids)} parameters but params "
            f"has {len(leaves)} leaves."
        )
    per_param = state_dict["state"]
    missing = [i for i in ids if i not in per_param]
    if missing:
        raise ValueError(
            f"from_pytorch_state: torch parameters {missing} have no state yet (take a step "
            f"before converting)."
        )
    slots = {}
    for slot in _SLOTS:
        present = [slot in per_param[i] for i in ids]
        if any(present) and not all(present):
            raise ValueError(f"from_pytorch_state: {slot!r} exists for some parameters only.")
        if not all(present):
            slots[slot] = None
            continue
        arrays = []
        for n, (i, leaf) in enumerate(zip(ids, leaves, strict=True)):
            value = _to_numpy(per_param[i][slot])
            if value.shape != jnp.shape(leaf):
                raise ValueError(
                    f"from_pytorch_state: {slot} of torch parameter {n} has shape {value.shape} "
                    f"but leaf {n} of params has shape {jnp.shape(leaf)}."
                )
            arrays.append(jnp.array(value, dtype=jnp.result_type(leaf), copy=True))
        slots[slot] = jax.tree.unflatten(treedef, arrays)
    steps = {int(_to_numpy(per_param[i]["step"])) for i in ids}
    if len(steps) != 1:
        raise ValueError(f"from_pytorch_state: parameters have different step counts {steps}.")
    return PyTorchRMSpropState(step=jnp.asarray(steps.pop(), jnp.int32), **slots)


def to_pytorch_state(
    opt_state: PyTorchRMSpropState, params: Tree, hyperparams: dict | None = None
) -> dict:
    """A ``state_dict`` for ``torch.optim.RMSprop.load_state_dict`` from a :func:`pytorch` state.

    Args:
      opt_state: the state of ``compat.pytorch(...)``.
      params: the params it belongs to; their leaf order is the torch order.
      hyperparams: the param group's settings (``lr``, ``alpha``, ...), the
        arguments given to ``compat.pytorch``; torch's defaults fill the rest.
        ``load_state_dict`` replaces the optimizer's group with these.

    Returns:
      ``{'state': {i: {'step', 'square_avg', ...}}, 'param_groups': [...]}`` with
      torch tensors (requires torch), copies of the JAX arrays.
    """
    import torch

    leaves = jax.tree.leaves(params)
    step = torch.tensor(float(opt_state.step), dtype=torch.float32)
    # copies: torch's load_state_dict keeps the tensors it need not cast, and
    # optimizer.step() then writes into them in place
    slots = {
        slot: [torch.tensor(np.array(x, copy=True)) for x in jax.tree.leaves(tree)]
        for slot in _SLOTS
        if (tree := getattr(opt_state, slot)) is not None
    }
    state = {
        n: {"step": step.clone(), **{slot: values[n] for slot, values in slots.items()}}
        for n in range(len(leaves))
    }
    group = dict(TORCH_DEFAULTS, **(hyperparams or {}))
    group["params"] = list(range(len(leaves)))
    return {"state": state, "param_groups": [group]}
