import os
from collections import Counter

import pytest
import torch
from hypothesis import settings
from torch.utils._python_dispatch import TorchDispatchMode

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


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def backward_ops():
    """`backward_ops(loss) -> Counter`: the operators `loss.backward()` dispatches, by name
    (`"aten.zeros"`, `"mmattn.group_norm_act_bwd"`, ...)."""
    def count(loss: torch.Tensor) -> Counter[str]:
        with _CountOps() as mode:
            loss.backward()
        return mode.counts
    return count


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
