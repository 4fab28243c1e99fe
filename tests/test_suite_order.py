"""The test suite's own scheduling (tests/conftest.py): the long files are handed to pytest-xdist's workers first."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST


def test_the_longest_files_exist_and_xdist_keeps_their_order(pytestconfig):
    here = Path(__file__).parent
    assert all((here / name).is_file() for name in LONGEST_FIRST), "LONGEST_FIRST names a file that is gone"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    if pytestconfig.pluginmanager.hasplugin("xdist"):  # its default sorts files by their number of tests instead
        assert pytestconfig.option.loadscopereorder is False
