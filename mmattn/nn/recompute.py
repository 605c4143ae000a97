"""Selective activation checkpointing for the blocks: keep the outputs of a few expensive ops
for the backward, recompute everything else (norms, activations, dropout, projections).

A block decides per call with `wants_recompute(flag, x)`: `flag=None` (the blocks' default)
recomputes on accelerators, where the recomputed elementwise passes are cheap and activation
memory bounds the batch, and not on CPU, where compute is the scarce resource.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

aten = torch.ops.aten

PRODUCTS = (aten.convolution.default, aten.addmm.default, aten.mm.default, aten.bmm.default)
ATTENTION = (aten._scaled_dot_product_flash_attention_for_cpu.default,
             aten._scaled_dot_product_flash_attention.default,
             aten._scaled_dot_product_efficient_attention.default,
             aten._scaled_dot_product_cudnn_attention.default)


def attention_kernels() -> tuple:
    """The attention ops whose outputs (and softmax statistics) attention blocks keep."""
    return ATTENTION + (torch.ops.mmattn.segment_attention_fwd.default,)


class KeepOutputs:
    """Selective-checkpoint policy for one call: keep the outputs of the first `count` calls of
    `ops` (all of them if `count` is None), recompute everything else."""

    def __init__(self, ops: tuple, count: int | None = None):
        self.ops, self.count = ops, count
        self.seen = {False: 0, True: 0}  # calls of `ops` so far, in the forward / the recomputation

    def __call__(self, ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op not in self.ops:
            return CheckpointPolicy.PREFER_RECOMPUTE
        index = self.seen[ctx.is_recompute]
        self.seen[ctx.is_recompute] += 1
        keep = self.count is None or index < self.count
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE


def set_recompute(module: torch.nn.Module, flag: bool | None) -> torch.nn.Module:
    """Set `recompute` to `flag` on every block in `module` that has the setting; returns it."""
    for m in module.modules():
        if "recompute" in vars(m):
            m.recompute = flag
    return module


def wants_recompute(flag: bool | None, x: torch.Tensor) -> bool:
    """Whether a block with recompute setting `flag` recomputes for input `x` (only while autograd
    records: no-grad calls keep nothing anyway)."""
    on = x.device.type != "cpu" if flag is None else flag
    return on and torch.is_grad_enabled()


def checkpoint_keeping(fn: Callable, *args, ops: tuple, count: int | None = None):
    """`fn(*args)`, keeping for the backward only the outputs of `KeepOutputs(ops, count)` and
    `args`; the rest is recomputed in the backward (which stops once it has what it needs)."""
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: create_selective_checkpoint_contexts(KeepOutputs(ops, count)))
