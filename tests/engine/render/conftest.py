"""One renderer per test session over the shared rig (building the flow basis takes a few seconds)."""

import pytest


@pytest.fixture(scope="session")
def renderer(rig):
    from engine.render.renderer import Renderer

    return Renderer(rig).eval()
