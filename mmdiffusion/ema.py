"""Exponential moving averages of model weights, several rates at once.

Two profiles:

* ``"classic"``: rate ``beta`` is a constant decay with the usual warm-up,
  ``beta_t = min(beta, (1 + t) / (10 + t))`` after ``t`` optimiser steps (guided-diffusion uses 0.9999).
* ``"power"`` (EDM2, Karras et al. 2024): rate ``sigma_rel`` is the width of the averaging profile
  relative to the training length. After ``t`` steps the average is
  ``theta_hat_t = beta_t theta_hat_{t-1} + (1 - beta_t) theta_t`` with ``beta_t = (1 - 1/t)^(gamma + 1)``,
  i.e. weights ``w_s ~ s^gamma`` over the past steps ``s <= t``, whose relative standard deviation
  ``sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` equals ``sigma_rel``. The average forgets its
  initialisation (``beta_1 = 0``) and scales with run length, which suits short runs.

Averages are kept in float32 for every floating parameter; buffers are not tracked (an averaged
model takes them from the trained one, as `load_trained` does).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["EMA", "power_exponent"]

KINDS = ("classic", "power")
_SIGMA_REL_MAX = math.sqrt(1 / 12)  # sigma_rel at gamma = 0 (uniform average over the run)


def power_exponent(sigma_rel: float) -> float:
    """The exponent ``gamma >= 0`` whose power-function profile has relative width ``sigma_rel``
    (in ``(0, sqrt(1/12)]``); the relation is strictly decreasing, solved by bisection."""
    if not 0 < sigma_rel <= _SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {_SIGMA_REL_MAX:.4f}], got {sigma_rel!r}")

    def width(gamma: float) -> float:
        return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))

    lo, hi = 0.0, 1.0
    while width(hi) > sigma_rel:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if width(mid) > sigma_rel else (lo, mid)
    return 0.5 * (lo + hi)


class EMA:
    """Moving averages of ``model``'s floating parameters at each of ``rates``.

    Call :meth:`update` after every optimiser step with the number of steps taken so far
    (``t = 1`` after the first). ``state_dict()`` / ``load_state_dict()`` save and restore the
    averages; :meth:`copy_to` writes average ``index`` into a model with the same parameters.
    """

    def __init__(self, model: nn.Module, *, kind: str = "power", rates: Sequence[float] = (0.05, 0.1)) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        rates = tuple(float(r) for r in rates)
        if not rates:
            raise ValueError("rates must hold at least one rate")
        if kind == "classic" and not all(0 <= r < 1 for r in rates):
            raise ValueError(f"classic EMA decays must be in [0, 1), got {rates}")
        self.kind, self.rates = kind, rates
        self._gammas = tuple(power_exponent(r) for r in rates) if kind == "power" else ()
        self.names = [name for name, p in model.named_parameters() if p.is_floating_point()]
        params = dict(model.named_parameters())
        self.averages: list[list[torch.Tensor]] = [
            [params[name].detach().float().clone() for name in self.names] for _ in rates]

    def decay(self, index: int, step: int) -> float:
        """``beta_t`` of average ``index`` at optimiser step ``step >= 1``."""
        if step < 1:
            raise ValueError(f"step must be >= 1 (optimiser steps taken), got {step}")
        if self.kind == "classic":
            return min(self.rates[index], (1 + step) / (10 + step))
        return (1 - 1 / step) ** (self._gammas[index] + 1)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current parameters of ``model`` into every average (``step``: steps taken)."""
        params = dict(model.named_parameters())
        current = [params[name].detach().float() for name in self.names]
        for index, average in enumerate(self.averages):
            torch._foreach_lerp_(average, current, 1 - self.decay(index, step))

    @torch.no_grad()
    def copy_to(self, model: nn.Module, index: int = 0) -> nn.Module:
        """Load average ``index`` into ``model``'s parameters (cast to their dtype); returns ``model``."""
        params = dict(model.named_parameters())
        missing = [name for name in self.names if name not in params]
        if missing:
            raise ValueError(f"model lacks averaged parameters {missing[:3]}...")
        for name, average in zip(self.names, self.averages[index]):
            params[name].copy_(average)
        return model

    def state_dict(self) -> dict:
        """Averages as ``{"kind", "rates", "averages": [{name: tensor}]}`` (loadable with ``weights_only``)."""
        return {"kind": self.kind, "rates": list(self.rates),
                "averages": [dict(zip(self.names, average)) for average in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind or tuple(state["rates"]) != self.rates:
            raise ValueError(f"EMA state is {state['kind']} {tuple(state['rates'])}, this EMA is "
                             f"{self.kind} {self.rates}")
        for average, saved in zip(self.averages, state["averages"]):
            if sorted(saved) != sorted(self.names):
                raise ValueError("EMA state holds different parameter names than the model")
            for tensor, name in zip(average, self.names):
                tensor.copy_(saved[name])
