import sys

import pytest

from engine.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_tuning_is_accepted_by_glibc():
    assert tune_allocator() is True
