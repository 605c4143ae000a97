import os
from collections import Counter

import pytest
import torch
from hypothesis import settings

# Bounded, deadline-free property tests: CI runs on 2 cores.
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors, where threads only add synchronisation
    (5x slower on 2 busy cores). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def backward_ops():
    """`backward_ops(loss) -> Counter`: the operators `loss.backward()` dispatches, by name
    (`"aten.zeros"`, `"mmattn.group_norm_act_bwd"`, ...)."""
    from benchmarks.model_profile import CountOps  # here: most test modules do not need the benchmarks

    def count(loss: torch.Tensor) -> Counter[str]:
        with CountOps() as mode:
            loss.backward()
        ops: Counter[str] = Counter()
        for (_, name), n in mode.counts.items():
            ops[name] += n
        return ops
    return count


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
