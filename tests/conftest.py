"""Shared fixtures: one analysed portrait and rig per test session (analysis takes ~0.4 s)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def portrait():
    from engine.assets import DEFAULT_PORTRAIT
    from engine.face.analysis import analyze_portrait

    return analyze_portrait(DEFAULT_PORTRAIT, size=512)


@pytest.fixture(scope="session")
def rig(portrait):
    from engine.face.rig import Rig

    return Rig(portrait)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
