"""Offline render: a speech file and a portrait in, a talking-head MP4 out.

The same stages as a live stream (features -> motion driver -> renderer -> encoder), run
over a whole file as fast as the CPU allows, in fixed-size batches of frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from engine import assets, backends
from engine.audio.frontend import extract_features
from engine.audio.io import load_audio
from engine.backends import Prepare
from engine.errors import UserError
from engine.face.analysis import PasteBack, analyze_portrait
from engine.face.rig import Rig
from engine.io.video import Mp4Writer
from engine.motion import spec
from engine.motion.baseline import BaselineDriver, BaselineOptions
from engine.motion.choice import Baseline, Driver, Learned
from engine.motion.learned import LearnedDriver, LearnedOptions, weights_sampler
from engine.render.renderer import Renderer
from engine.runtime import resolve_device, set_threads
from engine.timebase import FPS, SAMPLE_RATE

BATCH = 4  # frames per renderer call: measured fastest on 2 cores (benchmarks/render_bench.py)


@dataclass(frozen=True)
class RenderRequest:
    audio: Path | None = None  # speech file; None = the bundled sample
    portrait: Path | None = None  # photo; None = the bundled portrait
    out: Path = Path("out/talk.mp4")  # MP4 to write
    size: int = 512  # output frame side in pixels
    emotion: str = "neutral"  # expression held through the clip
    expressiveness: float = 1.0  # scale of face motion
    head_motion: float = 1.0  # scale of head motion
    seed: int = 0  # blinks and head motion
    motion_out: Path | None = None  # also write the coefficients (.jsonl / .npz)
    full_photo: bool = False  # paste back into the whole photo instead of the square frame
    threads: int = 2  # torch intra-op threads
    progress: bool = True  # show a progress bar
    driver: Driver = Learned()  # the generator (its weights, backend and sampler) or the baseline
    prepare: Prepare | None = None  # makes the exported backends' graphs (engine/cli.py: export.runtime.prepare)
    device: str = "cpu"  # torch's (generator and renderer): "cpu" or "cuda"

    def make_driver(self):
        """The motion driver this request asks for (options verified, weights loaded)."""
        controls = dict(emotion=self.emotion, expressiveness=self.expressiveness, head_motion=self.head_motion,
                        seed=self.seed)
        if isinstance(self.driver, Baseline):
            return BaselineDriver(BaselineOptions(**controls))
        sampler = weights_sampler(self.driver.checkpoint) | self.driver.sampler_options()  # the user's win
        options = LearnedOptions(**controls, **sampler)
        step = backends.load(self.driver.backend, self.driver.checkpoint, options.sampler(), threads=self.threads,
                             device=self.device, prepare=self.prepare)
        return LearnedDriver(step, options)


MAX_FULL_PHOTO_SIDE = 1920  # --full-photo output: larger photos are scaled down (an 8000 px one made a 4.5 GB file)


def check_writable(path: Path, flag: str) -> None:
    """Fail now, before any compute, if `path` cannot be written: its folder is made if missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        existed = path.exists()
        with open(path, "ab"):  # appends nothing: an existing file is left as it was
            pass
        if not existed:  # a render that fails later leaves no empty file behind
            path.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"cannot write {flag} {path} ({reason}); pick a path in a folder you can write to") from None


def render_file(req: RenderRequest) -> str:
    """Render `req` to an MP4 and return a one-line summary for the user."""
    started = time.monotonic()
    if req.out.suffix.lower() != ".mp4":
        raise UserError(f"--out {req.out} should end in .mp4")
    if req.motion_out is not None and req.motion_out.suffix not in (".jsonl", ".npz"):
        raise UserError(f"--motion-out {req.motion_out} should end in .jsonl or .npz")
    check_writable(req.out, "--out")
    if req.motion_out is not None:
        check_writable(req.motion_out, "--motion-out")
    set_threads(req.threads)
    if isinstance(req.driver, Learned):
        backends.check(req.driver.backend, req.device)  # before the slow work: a backend that cannot run fails at once

    audio_path = req.audio or assets.SAMPLE_SPEECH
    samples = load_audio(audio_path)
    portrait = analyze_portrait(req.portrait or assets.DEFAULT_PORTRAIT, size=req.size)
    renderer = Renderer(Rig(portrait)).eval().to(resolve_device(req.device))

    motion = req.make_driver().drive(extract_features(samples))
    if req.motion_out is not None:
        req.motion_out.parent.mkdir(parents=True, exist_ok=True)
        spec.save(req.motion_out, motion)

    frames = len(motion)
    notes = list(portrait.notes)
    if req.full_photo and max(portrait.photo.shape[:2]) > MAX_FULL_PHOTO_SIDE:
        portrait = portrait.scaled(MAX_FULL_PHOTO_SIDE / max(portrait.photo.shape[:2]))
        notes.append(f"--full-photo: the photo was scaled down to {portrait.photo.shape[1]}x{portrait.photo.shape[0]} "
                     f"(at most {MAX_FULL_PHOTO_SIDE} px a side)")
    paste = PasteBack(portrait) if req.full_photo else None
    size = portrait.photo.shape[1::-1] if paste else (req.size, req.size)
    bar = tqdm(total=frames, unit="frame", desc="rendering", disable=not req.progress, leave=False)
    with Mp4Writer(req.out, size=size, audio=samples) as writer, torch.inference_mode():
        for start in range(0, frames, BATCH):
            batch = torch.from_numpy(motion[start : start + BATCH])
            for image in renderer.frames(batch):
                writer.write(paste(image) if paste else image)
            bar.update(len(batch))
    bar.close()

    elapsed = time.monotonic() - started
    seconds = len(samples) / SAMPLE_RATE
    notes = "".join(f"\nnote: {n}" for n in notes)
    return (f"wrote {req.out}: {frames} frames ({frames / FPS:.2f} s) {writer.size[0]}x{writer.size[1]} {writer.codec} + aac "
            f"from {audio_path.name}; {elapsed:.1f} s, {seconds / elapsed:.1f}x real time{notes}")
