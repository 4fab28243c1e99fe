"""Fixtures shared by several test modules.

``trained_phantom``: the tiny phantom converted, planned and trained once per test session with
``nnUNetTrainerMTL_tiny`` (fold 0) through the real commands. Tests that only read the trained model (prediction,
the Python API, export, the gallery) share it; a test that writes must write under its own ``tmp_path`` or under a
name of its own in the fixture's root.
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
