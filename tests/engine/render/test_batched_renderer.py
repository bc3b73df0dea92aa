"""The renderer batched across sessions: each session's frames are the ones it gets rendered alone."""

import threading

import numpy as np
import torch

from engine.motion import spec
from engine.render.batching import BatchedRenderer
from tests.engine.render.test_renderer import POSES


class Slow:
    """The renderer, 30 ms slower a call: sessions asking meanwhile queue up and share the next call."""

    def __init__(self, renderer):
        self.renderer, self.calls = renderer, []

    def frames(self, coeffs):
        self.calls.append(len(coeffs))
        threading.Event().wait(0.03)
        return self.renderer.frames(coeffs)


def test_frames_of_sessions_rendered_together_equal_those_rendered_alone(renderer):
    """Six sessions (a thread each) ask for two frames at once; the calls that meet are one renderer call,
    and every session gets its own frames: equal to its frames rendered alone to one grey level (the
    batched warp products round differently; measured: identical)."""
    motion = [torch.from_numpy(np.stack([spec.from_dict(POSES[i]), spec.from_dict(POSES[(i + 1) % len(POSES)])]))
              for i in range(6)]
    alone = [renderer.frames(m) for m in motion]
    slow = Slow(renderer)
    batched, got = BatchedRenderer(slow), {}
    start = threading.Barrier(6)

    def session(i: int) -> None:
        start.wait()
        got[i] = batched.frames(motion[i])

    threads = [threading.Thread(target=session, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(6):
        assert got[i].shape == (2, renderer.size, renderer.size, 3) and got[i].dtype == np.uint8
        assert np.abs(got[i].astype(int) - alone[i]).max() <= 1, f"session {i}"
    assert sum(slow.calls) == 12 and len(slow.calls) < 6, slow.calls  # the calls that met went together
    assert batched.calls == len(slow.calls) and batched.frames_out == 12
