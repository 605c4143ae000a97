"""`mmattn.dropout` (mask recomputed from a seed) and the `mmattn.nn.Dropout` switch. The CUDA
kernel shares the mask function (csrc/dropout_mask.h); tests/test_cuda.py compares it with the
CPU kernel."""
import pytest
import torch

import mmattn
from mmattn.nn import Dropout, set_dropout_stream


def test_mask_rate_scale_and_independence():
    p, n = 0.3, 1 << 20
    y = mmattn.dropout(torch.ones(n), p, seed=1)
    kept = y != 0
    # Binomial(n, 1 - p): standard deviation of the kept fraction is sqrt(p (1 - p) / n) ~ 4.5e-4.
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # Neighbouring elements are uncorrelated (|r| of n samples ~ 1 / sqrt(n) ~ 1e-3).
    k = kept.double()
    assert abs(torch.corrcoef(torch.stack([k[:-1], k[1:]]))[0, 1].item()) < 5 / n ** 0.5


def splitmix_keeps(seed: int, p: float, n: int) -> torch.Tensor:
    """The mask of csrc/dropout_mask.h written out in Python: element i is kept iff the top 32
    bits of SplitMix64's finaliser of seed + (i + 1) * golden ratio are >= p * 2^32."""
    m, threshold, keeps = (1 << 64) - 1, int(p * 2 ** 32), []
    for i in range(n):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        keeps.append(((z ^ (z >> 31)) >> 32) >= threshold)
    return torch.tensor(keeps)


@pytest.mark.parametrize("seed", [0, 12345, -7])
def test_mask_is_the_documented_hash(seed):
    # the kernels take the seed as int64 and hash its two's-complement bits
    kept = mmattn.dropout(torch.ones(300), 0.3, seed=seed) != 0
    assert torch.equal(kept, splitmix_keeps(seed % 2 ** 64, 0.3, 300))


def test_seed_determines_mask_and_generator_draws_it():
    x = torch.randn(64, 33)
    assert torch.equal(mmattn.dropout(x, 0.5, seed=7), mmattn.dropout(x, 0.5, seed=7))
    assert not torch.equal(mmattn.dropout(x, 0.5, seed=7), mmattn.dropout(x, 0.5, seed=8))
    torch.manual_seed(0)
    a = mmattn.dropout(x, 0.5)
    torch.manual_seed(0)
    assert torch.equal(a, mmattn.dropout(x, 0.5))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_streams_drop_different_elements_from_one_generator_state(impl):
    """Data-parallel ranks share one generator state (the same RS-MMA shifts); a module's stream
    (its rank) gives each its own masks, and the generator advances alike."""
    x = torch.ones(64, 33, requires_grad=True)
    masks, states = [], []
    for stream in (0, 1, 2):
        module = set_dropout_stream(torch.nn.Sequential(Dropout(0.5, impl=impl)), stream)
        torch.manual_seed(0)
        y = module(x)
        y.backward(torch.ones_like(y))
        states.append(torch.get_rng_state())
        masks.append(y != 0)
        assert torch.equal(x.grad != 0, masks[-1])   # the backward recomputes this stream's mask
        x.grad = None
    assert all(torch.equal(s, states[0]) for s in states)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    if impl == "fused":
        torch.manual_seed(0)
        assert torch.equal(mmattn.dropout(x, 0.5) != 0, masks[0])   # stream 0: the plain draw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "frames_last", "sliced", "sliced_channels_last"])
def test_backward_recomputes_the_mask(dtype, layout):
    if layout == "frames_last":
        x = torch.randn(2, 3, 5, 4, 8, dtype=dtype).permute(0, 1, 4, 2, 3)
    elif layout == "sliced":
        x = torch.randn(6, 10, dtype=dtype)[:, ::2]
    elif layout == "sliced_channels_last":  # not dense: the output takes the layout empty_like picks
        x = torch.randn(2, 8, 6, 6, dtype=dtype).to(memory_format=torch.channels_last)[:, :, ::2]
    else:
        x = torch.randn(3, 40, dtype=dtype)
    x.requires_grad_()
    y = mmattn.dropout(x, 0.25, seed=3)
    assert y.stride() == torch.empty_like(x).stride()
    grad = torch.randn(x.shape, dtype=dtype).transpose(0, 1).contiguous().transpose(0, 1)  # other strides
    y.backward(grad)
    # The mask of this seed and memory layout (ones_like keeps x's strides, or is contiguous
    # like the copy the op makes of a non-dense x).
    kept = mmattn.dropout(torch.ones_like(x), 0.25, seed=3) != 0
    scale = torch.where(kept, 1 / 0.75, 0.0).to(dtype)
    torch.testing.assert_close(y, x.detach() * scale)
    torch.testing.assert_close(x.grad, grad * scale)


def test_edge_probabilities_and_opcheck():
    x = torch.randn(5, 7, requires_grad=True)
    assert mmattn.dropout(x, 0.0) is x
    assert torch.equal(mmattn.dropout(x, 1.0), torch.zeros_like(x))
    torch.library.opcheck(torch.ops.mmattn.dropout.default, (x, 0.4, 11))


@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(3), 1.5), ValueError, "p must be"),
    ((torch.randn(3), -0.1), ValueError, "p must be"),
    ((torch.ones(3, dtype=torch.long), 0.1), TypeError, "x must be float32"),
    ((torch.randn(3, device="meta"), 0.1), ValueError, "run on CPU.* got x on meta"),
])
def test_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        mmattn.dropout(*args)


def test_module_switch():
    x = torch.randn(4, 16)
    fused, reference = Dropout(0.5), Dropout(0.5, impl="reference")
    torch.manual_seed(0)
    y = fused(x)
    torch.manual_seed(0)
    assert torch.equal(y, mmattn.dropout(x, 0.5))
    assert torch.equal(fused.eval()(x), x) and torch.equal(reference.eval()(x), x)
    with pytest.raises(ValueError, match="impl"):
        Dropout(0.1, impl="fast")
