"""dltool.errors: the one line a library's error becomes inside a dltool message."""

from __future__ import annotations

import pytest

from dltool.errors import first_line


@pytest.mark.parametrize("exc, line", [
    (RuntimeError("size mismatch for fc.weight\n  copying a param with shape [10, 4]"), "size mismatch for fc.weight"),
    (ValueError("\n  leading blank lines are skipped\nsecond"), "leading blank lines are skipped"),
    (KeyError("fc.bias"), "'fc.bias'"),
    (OSError(), "OSError"),
    (ValueError("   \n "), "ValueError"),
])
def test_first_line_is_the_first_line_of_the_message_or_the_type(exc, line):
    assert first_line(exc) == line
