"""Activation recomputation for the blocks: the normalised activations a block feeds to its
products are not kept for the backward but recomputed there (one norm pass, dropout replayed
from the saved random state), and on accelerators so are the attention blocks' q/k/v (one
projection of the recomputed activations: `then`, `recomputes_projections`).

A block decides per call with `recompute_min_bytes(flag)`: `flag=None` (the blocks' default)
recomputes values of `MIN_RECOMPUTE_BYTES` (8 MiB) or more, on every device; `True` recomputes
every value, `False` none. A recomputation costs the host about as much for a small value as
for a large one (a norm pass: a few kernel launches, the bound of a GPU step at batch 4), while
the memory it saves grows with the value: at paper-64, batch 4, 16-bit, the 85 of 250 values
under 8 MiB hold 0.3 of the 6.1 GB that recomputing everything saves. On CPU recomputing costs
no measurable time (paper-64 at batch 1, fp32, everything recomputed vs kept, two runs of three
interleaved pairs, the order swapped between runs: 27.9 vs 25.5 s and 25.8 vs 28.5 s, the later
variant of each pair the faster both times) at 0.86-0.91 of the memory (5.6 vs 6.2-6.5 GiB).

The mechanism is a pair of saved-tensor hooks (`recompute_saved`) around the value's consumers:
a tensor autograd saves there that views a recomputable value is stored as its geometry alone.
It costs one Python call per saved tensor, where selective checkpointing (a dispatch mode over
every op, then a re-run of the region) doubled the host time of a paper-64 training step - the
bound of a GPU step at batch 4. Under `torch.compile` the blocks recompute nothing themselves:
inductor's partitioner rematerialises cheap ops on its own.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from mmattn.nn.autocast import autocast_dtype


def set_recompute(module: torch.nn.Module, flag: bool | None) -> torch.nn.Module:
    """Set `recompute` to `flag` on every block in `module` that has the setting; returns it."""
    for m in module.modules():
        if "recompute" in vars(m):
            m.recompute = flag
    return module


MIN_RECOMPUTE_BYTES = 8 << 20  # the default (`flag=None`): smaller values are kept


def recompute_min_bytes(flag: bool | None) -> int | None:
    """The size from which a block with recompute setting `flag` recomputes a value now: 0 for
    `True`, `MIN_RECOMPUTE_BYTES` for `None`; None (keep everything) for `False`, when autograd
    does not record, and under torch.compile."""
    if flag is False or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return 0 if flag else MIN_RECOMPUTE_BYTES


class Recipe:
    """How to recompute one value: `fn()` under the autocast state it first ran under and the
    random state (of `random_on`'s generator) it first drew from."""

    def __init__(self, value: torch.Tensor, fn: Callable[[], torch.Tensor],
                 random_on: torch.device | None = None, rng_state: torch.Tensor | None = None):
        # the value's storage, not the value: keeping a reference would keep its memory
        self.key = (value.untyped_storage().data_ptr(), value.dtype, value.device)
        self.offset = value.storage_offset()
        self.fn = fn
        self.random_on, self.rng_state = random_on, rng_state
        device = value.device.type
        self.autocast = dict(device_type=device, dtype=torch.get_autocast_dtype(device),
                             enabled=torch.is_autocast_enabled(device))
        self.value: torch.Tensor | None = None  # recomputed once, on first use in the backward

    def matches(self, t: torch.Tensor) -> bool:
        """Whether `t` is a view of the value."""
        return (t.untyped_storage().data_ptr(), t.dtype, t.device) == self.key

    def recompute(self) -> torch.Tensor:
        """The value, recomputed on the first call."""
        if self.value is None:
            device = self.random_on
            with torch.no_grad(), torch.autocast(**self.autocast), torch.random.fork_rng(
                    devices=[device] if device is not None and device.type == "cuda" else [],
                    enabled=device is not None):
                if device is not None:
                    _set_rng_state(device, self.rng_state)
                self.value = self.fn()
        return self.value

    def view(self, size, stride, offset: int) -> torch.Tensor:
        """The view of the recomputed value with this geometry (`offset` from the value's own)."""
        value = self.recompute()
        return value.as_strided(size, stride, value.storage_offset() + offset)


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def recomputable(fn: Callable[[], torch.Tensor], min_bytes: int | None,
                 random_on: torch.device | None = None) -> tuple[torch.Tensor, Recipe | None]:
    """`fn()` and the recipe to recompute it if it has at least `min_bytes` bytes (None: no
    recipe; `recompute_min_bytes`). `random_on`: the device whose random numbers `fn` draws
    (dropout), so that the recomputation replays this call's random state.

    Under autocast the value is made in autocast's dtype (as its consumers, matrix products,
    would cast it), so that what they save is the value itself rather than a cast copy."""
    if min_bytes is None:
        return fn(), None
    rng_state = None if random_on is None else _rng_state(random_on)  # before fn draws
    value = fn()
    dtype = autocast_dtype(value)
    if dtype is not None and dtype != value.dtype:
        value, fn = value.to(dtype), (lambda make=fn: make().to(dtype))
    if value.nbytes < min_bytes:
        return value, None
    return value, Recipe(value, fn, random_on, rng_state)


def recomputes_projections(device: torch.device) -> bool:
    """Whether values made by a product of a recomputed value (the attention blocks' q/k/v: `then`)
    are recomputed too on `device`: on accelerators, whose memory bounds the batch; not on CPU,
    where the projection costs more time than its memory saves (paper-64 fp32 at batch 1, three
    interleaved pairs: 24.5 s keeping q/k/v vs 26.3 s recomputing them, medians)."""
    return device.type != "cpu"


def then(recipe: Recipe | None, value: torch.Tensor,
         fn: Callable[[torch.Tensor], torch.Tensor]) -> Recipe | None:
    """The recipe of `value`, which `fn` made from `recipe`'s value just now: recomputed as `fn`
    of the recomputed value (one recomputation of that value serves both); None without a
    recipe (recomputation off) or where `recomputes_projections` says no."""
    if recipe is None or not recomputes_projections(value.device):
        return None
    return Recipe(value, lambda: fn(recipe.recompute()))


@contextlib.contextmanager
def recompute_saved(*recipes: Recipe | None):
    """Inside, tensors autograd saves that view a recipe's value are stored as their geometry and
    recomputed in the backward; a no-op when every recipe is None."""
    recipes = [r for r in recipes if r is not None]
    if not recipes:
        yield
        return

    def pack(t: torch.Tensor):
        for recipe in recipes:
            if recipe.matches(t):
                return recipe, t.size(), t.stride(), t.storage_offset() - recipe.offset
        return t

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        recipe, size, stride, offset = packed
        return recipe.view(size, stride, offset)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
