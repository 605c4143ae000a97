"""The kernel benchmarks through pytest-benchmark (not part of the test suite):

    python -m pytest benchmarks/test_kernels.py --benchmark-enable [-k ds8]

Same cases and baselines as `python -m benchmarks.kernels`; pytest-benchmark's own tables and
`--benchmark-compare` then work across commits.
"""
import pytest
import torch

from benchmarks.kernels import (ATTENTION_CASES, NORM_CASES, attention_call, attention_impls,
                                attention_inputs, norm_call, norm_impls, norm_inputs)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BATCH = 4 if DEVICE.type == "cuda" else 2


def _run(benchmark, fn):
    def call():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    benchmark.pedantic(call, warmup_rounds=1, rounds=3, iterations=1)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", ["mmattn", "gather", "dense"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.name)
def test_rs_attention(benchmark, case, impl, mode):
    benchmark.group = f"rs_attention {case.name} {mode}"
    inputs = attention_inputs(case, BATCH, DTYPE, DEVICE, mode == "fwdbwd")
    _run(benchmark, attention_call(attention_impls(case, BATCH, DEVICE)[impl], inputs, mode))


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", ["mmattn", "eager"])
@pytest.mark.parametrize("case", NORM_CASES, ids=lambda c: c.name)
def test_group_norm_act(benchmark, case, impl, mode):
    benchmark.group = f"group_norm_act {case.name} {mode}"
    inputs = norm_inputs(case, BATCH, DTYPE, DEVICE, mode == "fwdbwd")
    _run(benchmark, norm_call(norm_impls(case, DEVICE)[impl], inputs, mode))
