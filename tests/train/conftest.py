"""The train/ tests' name for the shared tiny corpus (tests/conftest.py builds it once per session)."""

import pytest


@pytest.fixture(scope="session")
def data(corpus_dir):
    """The corpus, under the name the training tests pass as --data."""
    return corpus_dir
