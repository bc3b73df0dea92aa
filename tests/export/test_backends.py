"""The backends' export cache: keyed by the weights, the sampler and the code the graphs are traced from."""

import sys

from engine import assets
from engine.motion.sampler import SamplerOptions
from export import runtime


def test_an_export_is_reused_only_for_the_same_weights_sampler_and_graph_code(monkeypatch):
    here = runtime.export_dir(assets.FAST_MOTION, SamplerOptions(steps=4))
    assert runtime.export_dir(assets.FAST_MOTION, SamplerOptions(steps=4)) == here
    assert runtime.export_dir(assets.FAST_MOTION, SamplerOptions(steps=2)) != here
    assert runtime.export_dir(assets.DEFAULT_MOTION, SamplerOptions(steps=4)) != here
    monkeypatch.setattr(runtime, "code_digest", lambda: "the model code changed")
    assert runtime.export_dir(assets.FAST_MOTION, SamplerOptions(steps=4)) != here


def test_the_code_digest_follows_the_source_of_the_graph_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "graph_code_a.py").write_text("X = 1\n")
    (tmp_path / "graph_code_b.py").write_text("Y = 2\n")
    modules = ("graph_code_a", "graph_code_b")
    before = runtime.code_digest(modules)
    assert runtime.code_digest(modules) == before
    (tmp_path / "graph_code_b.py").write_text("Y = 3\n")
    assert runtime.code_digest(modules) != before
    assert len(runtime.code_digest()) == 64 and "graph_code_a" not in sys.modules  # read, never imported
