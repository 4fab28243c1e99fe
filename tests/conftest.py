"""Fixtures shared by several test modules.

``trained_phantom``: the tiny phantom converted, planned and trained once per test session with
``nnUNetTrainerMTL_tiny`` (fold 0) through the real commands. Tests that only read the trained model (prediction,
the Python API, export, the gallery) share it; a test that writes must write under its own ``tmp_path`` or under a
name of its own in the fixture's root.

``thyroid_src``: a ThyroidXL source tree under the test's ``tmp_path`` (tests/convert_helpers.py's
``write_thyroid_xl``), for the ThyroidXL and AIMI converter tests.
"""
from __future__ import annotations

import pytest

from tests.e2e_helpers import nnunet_env, planned_phantom, train

PHANTOM_DATASET = "501"
PHANTOM_TRAINER = "nnUNetTrainerMTL_tiny"


@pytest.fixture(scope="session")
def trained_phantom(tmp_path_factory):
    """{"root", "env", "raw", "model", "train_log", "dataset", "trainer"} of the session's trained tiny phantom."""
    root = tmp_path_factory.mktemp("trained_phantom")
    env = nnunet_env(root)
    raw = planned_phantom(env, PHANTOM_DATASET)
    result, model = train(env, PHANTOM_DATASET, PHANTOM_TRAINER)
    return {"root": root, "env": env, "raw": raw, "model": model, "train_log": result.stdout,
            "dataset": PHANTOM_DATASET, "trainer": PHANTOM_TRAINER}


@pytest.fixture
def thyroid_src(tmp_path):
    """tmp_path/ThyroidXL: a ThyroidXL source tree with the published layout and its quirks (THYROID_PATIENTS)."""
    from tests.convert_helpers import write_thyroid_xl
    return write_thyroid_xl(tmp_path / "ThyroidXL")


# fixtures that train a network or run a recipe: a test that uses one is slow (pyproject.toml's "slow" marker);
# by name, or (module, name) for a name other modules use for something cheap
SLOW_FIXTURES = {"trained_phantom", "synthetic_run", "two_folds", ("test_seams", "phantom")}


# the longest test files, longest first (worker-seconds in CI's run of stop 37, on 2 idle cores: recipes 1,006 s,
# e2e 590, device_check 540, cpu_amp 455, seeds 452, readme 340, per_fold 229, partial_trainers 191, seams 175,
# lesion_aware_e2e 122, crash_safety 120; the other 60 files about 600 together). pytest-xdist's --dist loadfile
# hands whole files to its two workers in the order of the work queue, so a long file handed out late runs alone at
# the end while the other worker idles; handing the long ones out first evens the two out. The queue follows the
# collection order (sorted below) only without xdist's own reordering, which by default sorts the files by their
# number of tests (a 3-test file of 540 s went last): pytest_configure turns that off.
LONGEST_FIRST = ("test_recipes.py", "test_e2e.py", "test_device_check.py", "test_cpu_amp.py", "test_seeds.py",
                 "test_readme.py", "test_per_fold.py", "test_partial_trainers.py", "test_seams.py",
                 "test_lesion_aware_e2e.py", "test_crash_safety.py")


def pytest_configure(config):
    """pytest-xdist's --dist loadfile keeps the collection order of the files (LONGEST_FIRST) instead of its default
    reorder by number of tests (as --no-loadscope-reorder would, which the README's command need not spell; an
    explicit --loadscope-reorder still wins)."""
    if hasattr(config.option, "loadscopereorder") and "--loadscope-reorder" not in config.invocation_params.args:
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Every e2e test, and every test using a fixture of SLOW_FIXTURES, is also marked slow: ``-m "not slow"`` is
    the fast subset (README, "Tests and benchmarks"). The files of LONGEST_FIRST come first, in that order (each
    file's tests stay together and in their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        used = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("e2e") or SLOW_FIXTURES & (used | {(module, name) for name in used}):
            item.add_marker(pytest.mark.slow)
