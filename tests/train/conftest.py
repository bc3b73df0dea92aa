"""The tiny synthetic corpus the train/ tests share (built once per session)."""

import warnings

import pytest

from train.synth import corpus as synth
from train.synth import tts


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """30 s of synthetic speech; tests that need it skip where no TTS engine is installed."""
    if not tts.available_voices():
        pytest.skip("no TTS engine installed (apt-get install flite)")
    out = tmp_path_factory.getbasetemp() / "motion_corpus"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # engines missing here
        synth.synth_corpus(out, hours=30 / 3600, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def data(corpus_dir):
    """The same corpus, under the name the training tests pass as --data."""
    return corpus_dir
