"""The CPU block cache behind mmattn's CPU outputs (`mmattn.cpu_cache`): blocks are reused,
never while in use, within the size rule and the limit; results are unchanged by reuse."""
import subprocess
import sys

import pytest
import torch

import mmattn
from mmattn.reference import group_norm_act_reference

MIB = 2**20


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache with the default limit, and leaves it so."""
    limit = mmattn.cpu_cache_stats().limit_bytes
    mmattn.empty_cpu_cache()
    yield
    mmattn.set_cpu_cache_limit(limit)
    mmattn.empty_cpu_cache()


def output_of(mib: float, seed: int = 0) -> torch.Tensor:
    """A float32 output of `mib` MiB from an mmattn CPU kernel (dropout), a function of `seed`."""
    x = torch.randn(int(mib * MIB) // 4, generator=torch.Generator().manual_seed(seed))
    return mmattn.dropout(x, 0.1, seed=seed)


def test_freed_block_is_reused_and_counted():
    y = output_of(4)
    ptr, before = y.data_ptr(), mmattn.cpu_cache_stats()
    del y
    assert mmattn.cpu_cache_stats().cached_bytes == 4 * MIB
    y = output_of(4)
    after = mmattn.cpu_cache_stats()
    assert y.data_ptr() == ptr
    assert (after.hits, after.misses, after.cached_bytes) == (before.hits + 1, before.misses, 0)


def test_block_in_use_is_not_handed_out():
    a, b = output_of(4, seed=1), output_of(4, seed=2)
    assert a.data_ptr() != b.data_ptr()
    torch.testing.assert_close(a, output_of(4, seed=1), rtol=0, atol=0)  # b did not overwrite a


def test_size_rule_up_to_a_quarter_larger():
    y = output_of(8)
    ptr = y.data_ptr()
    del y
    small = output_of(4)  # 8 MiB is more than 1/4 above 4 MiB: a fresh block
    assert small.data_ptr() != ptr and mmattn.cpu_cache_stats().cached_bytes == 8 * MIB
    close = output_of(7)  # within 1/4: the cached 8 MiB block
    assert close.data_ptr() == ptr and mmattn.cpu_cache_stats().cached_bytes == 0


def test_small_outputs_bypass_the_cache():
    before = mmattn.cpu_cache_stats()
    del_me = output_of(0.5)
    del del_me
    after = mmattn.cpu_cache_stats()
    assert (after.hits, after.misses, after.cached_bytes) == (before.hits, before.misses, 0)


def test_limit_and_empty():
    mmattn.set_cpu_cache_limit(6 * MIB)
    a, b = output_of(4, seed=1), output_of(4, seed=2)
    del a, b  # the second 4 MiB block would exceed the limit: freed
    assert mmattn.cpu_cache_stats().cached_bytes == 4 * MIB
    mmattn.set_cpu_cache_limit(2 * MIB)  # lowering the limit frees what is over it
    assert mmattn.cpu_cache_stats().cached_bytes == 0
    mmattn.set_cpu_cache_limit(0)
    del_me = output_of(4)
    del del_me
    assert mmattn.cpu_cache_stats().cached_bytes == 0
    mmattn.set_cpu_cache_limit(64 * MIB)
    del_me = output_of(4)
    del del_me
    assert mmattn.cpu_cache_stats().cached_bytes == 4 * MIB
    mmattn.empty_cpu_cache()
    assert mmattn.cpu_cache_stats().cached_bytes == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_limit_names_the_argument(bad):
    with pytest.raises(ValueError, match="nbytes"):
        mmattn.set_cpu_cache_limit(bad)


def test_reused_blocks_give_the_same_results():
    """GroupNorm forward and backward into blocks holding stale data (a previous call's
    outputs), in both memory formats the blocks are cut for."""
    torch.manual_seed(0)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 64, 32, 32, dtype=torch.float64).contiguous(memory_format=memory_format)
        x.requires_grad_(True)
        weight, bias = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
        ref = group_norm_act_reference(x, 32, weight, bias, act="silu")
        grad = torch.randn_like(ref)
        (ref_dx,) = torch.autograd.grad(ref, x, grad)
        for _ in range(3):
            y = mmattn.group_norm_act(x, 32, weight, bias)
            (dx,) = torch.autograd.grad(y, x, grad)
            assert y.stride() == x.stride() and dx.stride() == x.stride()
            torch.testing.assert_close(y, ref)
            torch.testing.assert_close(dx, ref_dx)
        assert mmattn.cpu_cache_stats().hits > 0


def test_mmattn_imports_before_torch():
    """`import mmattn` as a script's first import (mmattn._C needs torch's libraries loaded)."""
    code = "import mmattn; print(mmattn.cpu_cache_stats().limit_bytes)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 2 << 30


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # torch's own notice
def test_profiler_sees_cached_blocks():
    """Blocks handed out from the cache are reported like torch's CPU allocations."""
    x = torch.randn(MIB)  # 4 MiB
    del_me = mmattn.dropout(x, 0.1, seed=1)
    del del_me  # the profiled call reuses this block
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        y = mmattn.dropout(x, 0.1, seed=1)
    assert mmattn.cpu_cache_stats().hits >= 1
    (event,) = [e for e in prof.key_averages() if e.key == "mmattn::dropout"]
    assert event.self_cpu_memory_usage == y.numel() * y.element_size()
