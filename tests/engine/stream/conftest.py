"""Session tests run the worker on one torch thread: on a busy 2-core machine a 2-thread pool
shared with the asyncio thread stalls for hundreds of ms (DESIGN.md §13), which slows tests down."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
