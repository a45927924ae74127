"""What a run sets up in its process: the C allocator's setting for reusing freed tensor memory."""

from __future__ import annotations

import os
import sys

import pytest

from dltool.training.runtime import keep_freed_memory


def _glibc() -> bool:
    try:
        return "glibc" in os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux matter")
def test_glibc_takes_the_setting_and_other_allocators_are_left_alone():
    assert keep_freed_memory() is _glibc()
    assert keep_freed_memory() is _glibc()  # once more: the same answer, nothing breaks
