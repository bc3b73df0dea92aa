"""The long-running commands: `avatar serve` (a session per visitor) and `avatar live` (a local
microphone broadcast to viewers). Both print where to point a browser and stop cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from engine.backends import Prepare
from engine.backends.registry import StepRegistry
from engine.motion.choice import Baseline
from engine.server.app import LIVE_OPTIONS, AvatarServer, ServerConfig, backend_of, configure
from engine.server.whip import WhipPublisher, WhipTarget


async def _run(server: AvatarServer, banner: str, publish: WhipTarget | None = None) -> None:
    await server.start()
    publisher = None
    if publish is not None:
        publisher = WhipPublisher(server.relay, publish, server.ice_configuration())
        try:
            await publisher.start()
        except BaseException:
            await server.close()
            raise
        print(f"{banner}: publishing to {publish.url}", flush=True)
    noun = "sessions" if server.mode == "converse" else "viewers"
    limit = f"--max-sessions {server.capacity.describe()}" if server.capacity else f"{server.max_sessions} {noun}"
    print(f"{banner}: up to {limit}", flush=True)
    print(f"{banner}: open {server.url} in a browser (health: {server.url}health); Ctrl-C stops", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("stopping: closing sessions", file=sys.stderr, flush=True)
        if publisher is not None:
            await publisher.close()
        await server.close()


def serve(config: ServerConfig, threads: int = 1, prepare: Prepare | None = None, batching: bool = True) -> None:
    """`avatar serve`: until interrupted. `prepare` makes the exported backends' graphs (export.runtime);
    `batching` as engine.backends.registry.StepRegistry takes it."""
    configure(config, threads)
    with contextlib.closing(StepRegistry(backend_of(config), config.device, threads, prepare, batching)) as models:
        asyncio.run(_run(AvatarServer(config, models=models), "avatar serve"))


def live(config: ServerConfig, input_device: str | int | None, threads: int = 1, prepare: Prepare | None = None,
         publish: WhipTarget | None = None, batching: bool = True) -> None:
    """`avatar live`: the microphone `input_device` drives one session that every viewer of the page sees,
    and that `publish` (a WHIP endpoint) receives too. `prepare` makes the exported backends' graphs."""
    from engine.assets import DEFAULT_PORTRAIT
    from engine.audio.mic import Microphone, resolve_device
    from engine.render.renderer import Renderer
    from engine.stream import Session
    from engine.stream.presets import get_preset

    configure(config, threads)
    mic_device = resolve_device(input_device)  # before the slow loading: a wrong device name fails at once
    renderer = Renderer.from_photo(config.portrait or DEFAULT_PORTRAIT, config.size, config.device)
    preset = get_preset(config.preset)
    models = StepRegistry(backend_of(config), config.device, threads, prepare, batching)
    step = None if isinstance(config.driver, Baseline) else models.get(preset.weights, preset.steps)
    session = Session(renderer, step, preset, config.controls, options=LIVE_OPTIONS)

    async def main():
        server = AvatarServer(config, broadcast=session, models=models)
        with Microphone(session.push_audio, device=mic_device.index) as mic:
            print(f"avatar live: listening to {mic.device.name} at {mic.sample_rate} Hz", flush=True)
            await _run(server, "avatar live", publish)

    with contextlib.closing(models), contextlib.closing(session):  # the session stops before its generator
        asyncio.run(main())
