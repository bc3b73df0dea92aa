"""`avatar serve` / `avatar live`: one port for the page, websocket signaling and health (DESIGN.md §10).

    GET /            the page (client/web/index.html), and its app.js / style.css
    GET /health      {"status": "ok", "sessions": n, "max_sessions": m, "mode": ...}
    GET /ws          websocket signaling (engine.server.protocol); the Origin must be this server's own
                     (or one given with --allow-origin); clients that send no Origin (not a browser) pass

Two modes:
- converse (`avatar serve`): each visitor gets its own Session fed by their microphone; at most
  `max_sessions` at once. Model weights and renderers are shared, each session's state is its own.
- broadcast (`avatar live`): one Session fed by a local microphone; each visitor is a viewer of
  the same frames (one generation, relayed); at most `max_sessions` viewers.

A visitor's websocket is its lifetime: when it closes (or its peer connection fails) everything it
held is freed. A fault in one visitor (a malformed offer, a garbage data-channel message, a photo
without a face, a vanished client) is answered with an error message, logged as one line, and
touches nobody else.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from engine.errors import UserError
from engine.face.analysis import decode_image
from engine.motion.baseline import EMOTIONS
from engine.render.renderer import Renderer
from engine.runtime import resolve_device, set_threads
from engine.server import protocol
from engine.server.media import FrameRelay, Viewer, pump_audio
from engine.stream import PRESETS, Controls, Preset, Session, SessionOptions, get_preset
from engine.stream.presets import preset_model

log = logging.getLogger("avatar.server")

WEB_DIR = Path(__file__).resolve().parents[2] / "client" / "web"
STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}  # the only files served: no path comes from a request
STATS_INTERVAL_S = 1.0
RENDERER_CACHE = 4  # uploaded portraits kept ready (by content hash)
# Live talkers want the newest audio: at most 0.4 s of it waits (SessionOptions' 1 s default let a worker
# that fell behind once keep ~1 s of latency for the rest of the stream; see benchmarks/results/client_loopback.md),
# and what a stall left standing in the queue is drained within about a second, beyond one 20 ms packet.
LIVE_OPTIONS = SessionOptions(max_backlog_s=0.4, drain_backlog_s=0.02)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8080  # 0 picks a free port (tests)
    portrait: Path | None = None  # the default avatar (None: the bundled portrait)
    size: int = 512  # video width and height
    preset: str = "balanced"  # default preset; a client may ask for another
    driver: str = "learned"  # or "baseline"
    backend: str = "torch"  # the generator's: "torch", "onnxruntime" or "tensorrt" (export.runtime)
    device: str = "cpu"  # torch's (generator and renderer): "cpu" or "cuda"
    controls: Controls = Controls()  # initial controls of every session
    max_sessions: int = 4  # converse: sessions; broadcast: viewers
    uploads: bool = True  # visitors may bring their own portrait (converse mode)
    viewer_controls: bool = False  # broadcast: viewers may change controls / interrupt
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs; none needed on loopback or a LAN
    ice_username: str | None = None  # for TURN URLs
    ice_credential: str | None = None
    allow_origins: tuple[str, ...] = ()  # more page origins allowed to open /ws (e.g. a reverse proxy's)

    def __post_init__(self):
        get_preset(self.preset)
        if self.driver not in ("learned", "baseline"):
            raise UserError(f"driver must be 'learned' or 'baseline', got {self.driver!r}")
        if self.max_sessions < 1:
            raise UserError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise UserError(f"ICE server {url!r} must be a stun:, turn: or turns: URL (e.g. stun:stun.example.org:3478)")


@dataclass
class _Counters:
    visitors: int = 0
    refused_full: int = 0
    errors: dict = field(default_factory=dict)


class AvatarServer:
    """The server; `broadcast` (a running Session) switches it to broadcast mode."""

    def __init__(self, config: ServerConfig, broadcast: Session | None = None):
        self.config = config
        self.mode = "converse" if broadcast is None else "broadcast"
        self.relay = None if broadcast is None else FrameRelay(broadcast)
        self.visitors: set[Visitor] = set()  # those holding a session or a viewer slot
        self.counters = _Counters()
        self._ids = itertools.count(1)
        self._renderers: OrderedDict[str, tuple[Renderer, dict]] = OrderedDict()
        self._default_renderer: Renderer | None = None
        self._server = None

    # --- lifetime ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the default avatar and model, then listen. Raises UserError for a bad portrait."""
        loop = asyncio.get_running_loop()
        if self.relay is None:
            portrait = self.config.portrait
            from engine.assets import DEFAULT_PORTRAIT

            self._default_renderer = await loop.run_in_executor(
                None, Renderer.from_photo, portrait or DEFAULT_PORTRAIT, self.config.size, self.config.device)
            await loop.run_in_executor(None, generator_for, self.config, get_preset(self.config.preset))
        else:
            self.relay.start()
        self._server = await serve(
            self._visit, self.config.host, self.config.port, process_request=self._http,
            max_size=protocol.MAX_MESSAGE_BYTES, server_header="avatar-engine",
        )
        log.info("serving on %s (%s mode, up to %d %s)", self.url, self.mode, self.config.max_sessions,
                 "sessions" if self.mode == "converse" else "viewers")

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*(v.close() for v in list(self.visitors)))
        if self.relay is not None:
            await self.relay.close()

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    # --- shared resources --------------------------------------------------------------------
    async def renderer_for(self, upload: bytes | None) -> tuple[Renderer, dict]:
        """The default renderer, or one for an uploaded photo (cached by content); PortraitError if unusable."""
        if upload is None:
            return self._default_renderer, {}
        key = hashlib.sha256(upload).hexdigest()
        if key not in self._renderers:
            def build():
                image = decode_image(upload, "the uploaded portrait")
                return Renderer.from_photo(image, self.config.size, self.config.device), {"height": image.shape[0],
                                                                      "width": image.shape[1]}

            self._renderers[key] = await asyncio.get_running_loop().run_in_executor(None, build)
            while len(self._renderers) > RENDERER_CACHE:
                self._renderers.popitem(last=False)
        self._renderers.move_to_end(key)
        return self._renderers[key]

    def ice_for_clients(self) -> list[dict]:
        """The same STUN/TURN servers as the browser's RTCIceServer dicts (TURN needs the credentials too)."""
        c = self.config
        auth = {"username": c.ice_username, "credential": c.ice_credential} if c.ice_username else {}
        return [{"urls": url, **(auth if url.startswith("turn") else {})} for url in c.ice_servers]

    def ice_configuration(self) -> RTCConfiguration:
        """Only the configured servers: aiortc's default is a public STUN host, useless on loopback."""
        c = self.config
        return RTCConfiguration(iceServers=[RTCIceServer(urls=url, username=c.ice_username,
                                                         credential=c.ice_credential) for url in c.ice_servers])

    # --- HTTP ----------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_allowed(origin, request.headers.get("Host", "")):
                log.warning("refused a websocket from origin %s (not this server's; see --allow-origin)", origin)
                return connection.respond(403, f"origin {origin} may not open /ws; start the server with "
                                               f"--allow-origin {origin} to allow it\n")
            return None  # the websocket handshake goes on
        if path == "/health":
            return _response(200, "application/json", json.dumps(self.health()).encode())
        if path in STATIC:
            name, kind = STATIC[path]
            try:
                body = (WEB_DIR / name).read_bytes()
            except OSError:
                return connection.respond(500, f"the page's {name} is missing from {WEB_DIR}\n")
            return _response(200, f"{kind}; charset=utf-8", body)
        return connection.respond(404, f"nothing at {path}; the page is at /\n")

    def _origin_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return (parts.scheme in ("http", "https") and parts.netloc == host) or origin in self.config.allow_origins

    def health(self) -> dict:
        return {"status": "ok", "mode": self.mode, "sessions": len(self.visitors),
                "max_sessions": self.config.max_sessions, "visitors": self.counters.visitors,
                "refused_full": self.counters.refused_full, "errors": dict(self.counters.errors)}

    # --- visitors ------------------------------------------------------------------------------
    async def _visit(self, ws: ServerConnection) -> None:
        visitor = Visitor(self, ws, next(self._ids))
        self.counters.visitors += 1
        try:
            await visitor.run()
        finally:
            await visitor.close()

    def count_error(self, code: str) -> None:
        self.counters.errors[code] = self.counters.errors.get(code, 0) + 1


def _response(status: int, content_type: str, body: bytes) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return Response(status, "OK" if status == 200 else "Error", headers, body)


class Visitor:
    """One websocket connection: its portrait, peer connection, session (converse) or viewer slot."""

    def __init__(self, server: AvatarServer, ws: ServerConnection, number: int):
        self.server, self.ws, self.name = server, ws, f"visitor {number}"
        self.upload: bytes | None = None
        self.pc: RTCPeerConnection | None = None
        self.relay: FrameRelay | None = None
        self.viewer: Viewer | None = None
        self.channel = None
        self.started = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._ended = asyncio.Event()
        self._closed = False

    @property
    def session(self) -> Session | None:
        return None if self.relay is None else self.relay.session

    async def run(self) -> None:
        config = self.server.config
        await self._send({"type": "hello", "mode": self.server.mode, "presets": list(PRESETS),
                          "preset": config.preset, "emotions": list(EMOTIONS),
                          "uploads": config.uploads and self.server.mode == "converse",
                          "max_upload_bytes": protocol.MAX_UPLOAD_BYTES, "controls": vars(config.controls),
                          "viewer_controls": self.server.mode == "converse" or config.viewer_controls,
                          "ice_servers": self.server.ice_for_clients()})
        receiving = asyncio.create_task(self._receive())
        ended = asyncio.create_task(self._ended.wait())
        await asyncio.wait({receiving, ended}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, ended):
            task.cancel()

    async def _receive(self) -> None:
        try:
            async for text in self.ws:
                try:
                    await self._handle(protocol.parse_signal(text))
                except protocol.ProtocolError as err:
                    await self._refuse(err)
                    if err.fatal:
                        return
        except ConnectionClosed:
            pass

    async def _refuse(self, err: protocol.ProtocolError) -> None:
        self.server.count_error(err.code)
        log.warning("%s: %s: %s", self.name, err.code, err)
        try:
            await self.ws.send(err.to_message())
        except ConnectionClosed:
            pass

    async def _handle(self, message) -> None:
        if isinstance(message, protocol.PortraitUpload):
            if not (self.server.config.uploads and self.server.mode == "converse"):
                raise protocol.ProtocolError("uploads_disabled", "this server does not take portraits; "
                                             "it animates the portrait it was started with")
            if self.pc is not None:
                raise protocol.ProtocolError("bad_portrait", "send the portrait before the offer")
            try:
                _, info = await self.server.renderer_for(message.data)
            except UserError as err:
                raise protocol.ProtocolError("bad_portrait", str(err)) from None
            self.upload = message.data
            await self._send({"type": "portrait", **info})
        else:
            await self._answer(message)

    async def _answer(self, offer: protocol.Offer) -> None:
        server = self.server
        if self.pc is not None:
            raise protocol.ProtocolError("bad_offer", "one offer per connection; reconnect to start again", fatal=True)
        if len(server.visitors) >= server.config.max_sessions:
            server.counters.refused_full += 1
            raise protocol.ProtocolError(
                "full", f"the server is full ({server.config.max_sessions} of {server.config.max_sessions} "
                f"{'sessions' if server.mode == 'converse' else 'viewers'} in use); try again later", fatal=True)
        server.visitors.add(self)  # the slot is taken now, before anything awaits
        if server.mode == "converse":
            try:
                preset = get_preset(offer.preset or server.config.preset)
            except UserError as err:
                raise protocol.ProtocolError("bad_offer", str(err), fatal=True) from None
            renderer, _ = await server.renderer_for(self.upload)
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, generator_for, server.config, preset)
            session = await loop.run_in_executor(
                None, lambda: Session(renderer, model, preset, server.config.controls, options=LIVE_OPTIONS))
            self.relay = FrameRelay(session)
        else:
            self.relay = server.relay
        self.viewer = self.relay.subscribe()
        # The session's clock starts now, before any audio can arrive: a clock started on "connected"
        # can start after the first packets, and the audio queued meanwhile stays as latency for good.
        self.relay.start()

        self.pc = pc = RTCPeerConnection(server.ice_configuration())
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)
        try:
            sdp = resolve_mdns_candidates(offer.sdp, self.ws.remote_address[0])
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            for track in self.viewer.tracks():
                pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as err:  # aiortc raises many types for SDP it cannot use
            raise protocol.ProtocolError("bad_offer", f"cannot use this offer: {err or type(err).__name__}; "
                                         "send a WebRTC offer that receives video", fatal=True) from None
        await self._send({"type": "answer", "sdp": pc.localDescription.sdp})
        log.info("%s: negotiated (%s, preset %s)", self.name, server.mode,
                 self.session.preset.name if self.session else "-")

    def _on_track(self, track) -> None:
        if track.kind == "audio" and self.server.mode == "converse":
            self._spawn(pump_audio(track, self.session))

    def _on_channel(self, channel) -> None:
        self.channel = channel
        channel.on("message", self._on_channel_message)

    def _on_channel_message(self, text) -> None:
        try:
            message = protocol.parse_channel(text)
            if self.server.mode == "broadcast" and not self.server.config.viewer_controls:
                raise protocol.ProtocolError("read_only", "viewers of a broadcast cannot change it "
                                             "(the streamer can allow it with --viewer-controls)")
            if isinstance(message, protocol.Interrupt):
                self.session.interrupt()
            else:
                try:
                    self.session.set_controls(message.emotion, message.expressiveness, message.head_motion)
                except UserError as err:
                    raise protocol.ProtocolError("bad_message", str(err)) from None
        except protocol.ProtocolError as err:
            self.server.count_error(err.code)
            log.warning("%s: data channel: %s: %s", self.name, err.code, err)
            self._channel_send(json.loads(err.to_message()))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._spawn(self._stats())
        elif state in ("failed", "closed"):
            if state == "failed":
                log.warning("%s: the peer connection failed (client gone or unreachable); freeing its session",
                            self.name)
            self._ended.set()

    async def _stats(self) -> None:
        sent, clock = self.viewer.frames_sent, time.monotonic()
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            now, total = time.monotonic(), self.viewer.frames_sent
            fps, sent, clock = (total - sent) / (now - clock), total, now
            s = self.session.stats()
            ms = (lambda v: None if v is None else round(v * 1000, 1))
            self._channel_send({
                "type": "stats", "fps": round(fps, 1), "latency_ms": ms(s.latency_p50_s),
                "engine_latency_ms": ms(s.ready_latency_p50_s), "engine_latency_p95_ms": ms(s.ready_latency_p95_s),
                "floor_ms": ms(self.session.latency_floor_s), "frames_sent": total,
                "frames_dropped": s.frames_dropped + self.viewer.frames_dropped, "frames_late": s.frames_late,
                "audio_in_s": round(s.audio_in_s, 2), "preset": self.session.preset.name,
                "viewers": len(self.relay.viewers),
            })

    def _channel_send(self, message: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(protocol.encode(message))

    async def _send(self, message: dict) -> None:
        await self.ws.send(protocol.encode(message))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Free everything this visitor held (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self.viewer is not None:
            self.relay.unsubscribe(self.viewer)
        if self.pc is not None:
            await self.pc.close()
        if self.relay is not None and self.server.mode == "converse":
            await self.relay.close()
        if self in self.server.visitors:
            self.server.visitors.discard(self)
            log.info("%s: left after %.0f s; %d in use", self.name, time.monotonic() - self.started,
                     len(self.server.visitors))
        await self.ws.close()


def resolve_mdns_candidates(sdp: str, peer: str) -> str:
    """Give the offer's mDNS host candidates ("<uuid>.local", which Firefox and Chrome use to hide
    local addresses) addresses aiortc can reach: aioice cannot resolve them and fails at once.

    A browser's host candidate lives on the interface it reached us from, so a remote peer's
    candidates get the address its websocket came from. A peer on this machine (loopback) may sit
    on any of our interfaces: each candidate is offered once per local address, and ICE's checks
    keep the pair that answers."""
    import ipaddress

    from aioice.ice import get_host_addresses

    loopback = ipaddress.ip_address(peer).is_loopback
    addresses = get_host_addresses(use_ipv4=True, use_ipv6=False) if loopback else [peer]
    lines = []
    for line in sdp.splitlines():
        fields = line.split()
        if line.startswith("a=candidate:") and len(fields) > 5 and fields[4].endswith(".local"):
            for n, address in enumerate(addresses):
                foundation = fields[0] if n == 0 else f"{fields[0]}{n}"  # one foundation per address
                lines.append(" ".join([foundation, *fields[1:4], address, *fields[5:]]))
        else:
            lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def generator_for(config: ServerConfig, preset: Preset):
    """The generator a preset runs (loaded once, shared by all its sessions), or None for the baseline."""
    return (None if config.driver == "baseline"
            else preset_model(preset.weights, config.backend, preset.steps, config.device))


def configure(config: ServerConfig, threads: int) -> None:
    """Before anything slow: torch and OpenCV intra-op threads for every session worker (DESIGN.md §13:
    1 per real-time worker is stable), and a UserError if the backend or device cannot run here."""
    from export.runtime import check_backend

    set_threads(threads)
    resolve_device(config.device)
    if config.driver == "learned":
        check_backend(config.backend, config.device)
