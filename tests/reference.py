"""An independent float64 NumPy transcription of the RMSProp equations.

It follows the numbered steps of the algorithm (docs/algorithm.md) one by one,
over plain NumPy arrays, sharing no code with the library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Config:
    learning_rate: float | object = 0.01  # float or callable(step) -> float
    decay: float = 0.9
    eps: float = 1e-8
    initial_scale: float = 0.0
    eps_in_sqrt: bool = False
    centered: bool = False
    momentum: float | None = None
    nesterov: bool = False
    lr_in_momentum: bool = True
    bias_correction: bool = False
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    weight_decay_mask: bool = True
    maximize: bool = False


@dataclass
class RMSPropReference:
    cfg: Config
    params: np.ndarray
    t: int = 0
    nu: np.ndarray = field(init=False)
    m: np.ndarray = field(init=False)
    buf: np.ndarray = field(init=False)
    # The momentum buffer as the state stores it (8-bit or 4-bit codes, bfloat16:
    # rounded); the step uses the buffer as stored. None: stored exactly.
    store: Callable[[np.ndarray], np.ndarray] | None = None
    computed_buf: np.ndarray | None = None  # the last new buffer, before it was stored

    def __post_init__(self):
        self.params = np.array(self.params)
        real = np.real(self.params).dtype
        self.nu = np.full(self.params.shape, self.cfg.initial_scale, dtype=real)
        self.m = np.zeros_like(self.params)
        self.buf = np.zeros_like(self.params)

    def step(self, g: np.ndarray) -> np.ndarray:
        """Applies one update with gradient ``g``; returns the new params."""
        c, p = self.cfg, self.params
        g = np.array(g, dtype=p.dtype)
        wd = c.weight_decay if c.weight_decay_mask else 0.0
        # 1. maximize, coupled weight decay
        if c.maximize:
            g = -g
        if not c.decoupled_weight_decay:
            g = g + wd * p
        # 2. moments
        self.nu = c.decay * self.nu + (1 - c.decay) * np.real(np.conj(g) * g)
        if c.centered:
            self.m = c.decay * self.m + (1 - c.decay) * g
        # 3. bias correction
        if c.bias_correction:
            k = 1 - c.decay ** (self.t + 1)
            nu_hat, m_hat = self.nu / k, self.m / k
        else:
            nu_hat, m_hat = self.nu, self.m
        # 4. variance
        var = nu_hat
        if c.centered:
            var = np.maximum(nu_hat - np.real(np.conj(m_hat) * m_hat), 0.0)
        # 5. denominator
        denom = np.sqrt(var + c.eps) if c.eps_in_sqrt else np.sqrt(var) + c.eps
        s = g / denom
        # 6. learning rate and momentum
        lr = c.learning_rate(self.t) if callable(c.learning_rate) else c.learning_rate
        mu = c.momentum
        if mu is None or mu == 0:
            step = lr * s
        elif c.lr_in_momentum:
            self.buf = self._stored(mu * self.buf + lr * s)
            step = lr * s + mu * self.buf if c.nesterov else self.buf
        else:
            self.buf = self._stored(mu * self.buf + s)
            step = lr * (s + mu * self.buf) if c.nesterov else lr * self.buf
        # 7. decoupled weight decay
        if c.decoupled_weight_decay:
            step = step + lr * wd * p
        # 8. apply
        self.params = p - step
        self.t += 1
        return self.params

    def _stored(self, buf: np.ndarray) -> np.ndarray:
        """The new buffer as stored; ``computed_buf`` keeps it as computed."""
        self.computed_buf = buf
        return buf if self.store is None else np.asarray(self.store(buf), buf.dtype)
