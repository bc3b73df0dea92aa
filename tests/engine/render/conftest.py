"""One rig and one renderer per test session (building the flow basis takes a few seconds)."""

import cv2
import numpy as np
import pytest


def _portrait_image() -> np.ndarray:
    """The bundled portrait when there is one, else the astronaut's head and shoulders from scikit-image."""
    try:
        from engine.assets import DEFAULT_PORTRAIT
        from engine.face.analysis import load_image

        return load_image(DEFAULT_PORTRAIT)
    except (ImportError, FileNotFoundError, ValueError):
        from skimage import data

        return cv2.resize(data.astronaut()[0:300, 75:375], (512, 512), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="session")
def render_rig():
    from engine.face.analysis import analyze_portrait
    from engine.face.rig import Rig

    return Rig(analyze_portrait(_portrait_image(), size=512))


@pytest.fixture(scope="session")
def renderer(render_rig):
    from engine.render.renderer import Renderer

    return Renderer(render_rig).eval()
