"""The context tests run on one intra-op thread.

Their tensors are tiny (a 3 x 4 map of 16 channels), and a float64 gradcheck calls the block a few hundred times: a
second OpenMP thread has nothing to share there, but every parallel op still waits for it, and on a loaded 2-core
machine that wait (the thread is off the CPU) is what the tests spend their time on: the pam gradcheck took 9 s with
two threads and 0.4 s with one, the whole folder 2.5 min (measured at 1-min load average ~3.5). What they check does
not depend on the thread count.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
