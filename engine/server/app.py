"""`avatar serve` / `avatar live`: one port for the page, websocket signaling and health (DESIGN.md §10).

    GET /            the page (client/web/index.html, package data of `client`), and its app.js / style.css
    GET /health      {"status": "ok", "sessions": n, "max_sessions": m, "mode": ...}
    GET /ws          websocket signaling (engine.server.protocol)
    (HEAD works where GET does; other methods get 405)

Two modes:
- converse (`avatar serve`): each visitor gets its own Session fed by their microphone; at most
  `max_sessions` at once. Model weights and renderers are shared, each session's state is its own.
- broadcast (`avatar live`): one Session fed by a local microphone; each visitor is a viewer of
  the same frames (one generation, relayed); at most `max_sessions` viewers.

A visitor's websocket is its lifetime: when it closes (or its peer connection fails) everything it
held is freed, its slot first. A fault in one visitor (a malformed offer, a garbage data-channel
message, a photo without a face, a vanished client) is answered with an error message, logged as
one line, and touches nobody else.

What a hostile or careless client cannot do (tests/engine/server/test_hostile.py; README: threat model):
- reach /ws from another site's page: the Host header must name this server (its bound address,
  localhost, or an --allow-origin host; this defeats DNS rebinding), then a browser's Origin must be
  that Host or an --allow-origin;
- hold resources for free: websockets without a session (the lobby) are capped (MAX_LOBBY) and closed
  after `lobby_timeout_s` without a message (uploads are rate-limited); an answered offer must connect
  within `setup_timeout_s`; a converse visitor whose microphone sends nothing audible for
  `Converse.idle_timeout_s` is disconnected;
- exhaust CPU or memory with portraits: uploads run on their own one-thread executor, away from session
  set-up, at most UPLOADS_QUEUED at a time, rate-limited per connection and server-wide, and a photo
  over 16 MP is refused from its header (engine.face.analysis);
- flood the log or the replies: client strings are quoted cut short (protocol.quote); a visitor's errors
  past LOGGED_ERRORS are counted, not logged, and past MAX_ERRORS end its connection;
- aim the server's ICE checks at other hosts: an offer's candidates must be the visitor's own address
  (this machine's, for a visitor on loopback), or a relay's when TURN is configured;
- use our TURN server beyond its visit: it gets credentials derived from a secret that expire.
The server does neither TLS nor authentication: put it behind a reverse proxy for those.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import socket
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import OPEN

from engine import backends
from engine.backends.registry import StepRegistry
from engine.batch import PhaseGroups
from engine.errors import UserError
from engine.face.analysis import analyze_portrait, decode_image
from engine.face.rig import Rig
from engine.motion.baseline import EMOTIONS
from engine.motion.choice import Baseline, Driver, Learned
from engine.render.batching import BatchedRenderer
from engine.render.pool import RenderPool
from engine.render.renderer import Renderer
from engine.runtime import resolve_device, set_threads
from engine.server import capacity, protocol
from engine.server.media import VIDEO_CLOCK, VIDEO_MIME, VIDEO_TICKS, FrameRelay, Viewer, pump_audio
from engine.server.motion import MotionFeed
from engine.server.protocol import quote
from engine.stream import PRESETS, Controls, Preset, Session, SessionOptions, get_preset

log = logging.getLogger("avatar.server")

WEB_DIR = files("client") / "web"  # package data: found in a source tree and in an installed wheel alike
STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}  # the only files served: no path comes from a request
STATS_INTERVAL_S = 1.0
RENDERER_CACHE = 4  # uploaded portraits kept ready (by content hash)
# Live talkers want the newest audio: at most 0.4 s of it waits (SessionOptions' 1 s default let a worker
# that fell behind once keep ~1 s of latency for the rest of the stream; see benchmarks/results/client_loopback.md),
# and what a stall left standing in the queue is drained within about a second, beyond one 20 ms packet.
LIVE_OPTIONS = SessionOptions(max_backlog_s=0.4, drain_backlog_s=0.02)

MAX_LOBBY = 16  # websockets open without a session; more are told the server is busy
WATCH_INTERVAL_S = 0.25  # how often a visitor's lifetimes are checked
UPLOADS_QUEUED = 4  # portraits being analysed or waiting, server-wide; more are told to retry
UPLOAD_RATE = (3, 20.0)  # per connection: a burst of 3, then one every 20 s
UPLOAD_RATE_ALL = (8, 4.0)  # server-wide, new portraits: a burst of 8, then one every 4 s (~0.5 s of CPU each)
LOGGED_ERRORS = 3  # a visitor's first errors are logged; later ones only counted (health)
MAX_ERRORS = 8  # a visitor's errors (bad messages, refused uploads) before its connection is closed
MAX_CANDIDATES = 32  # ICE candidates taken from one offer
TURN_NAME_SERVER = "avatar-server"  # the TURN REST user name of the server's own allocations
VIDEO_CODEC = VIDEO_MIME.split("/")[1]  # what an offer must take (engine.server.media)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Converse:
    """`avatar serve`: each visitor's microphone drives their own avatar session."""

    uploads: bool = True  # visitors may bring their own portrait
    idle_timeout_s: float = 60.0  # a visitor whose microphone sends nothing audible this long is let go

    def __post_init__(self):
        if self.idle_timeout_s <= 0:
            raise UserError(f"idle_timeout_s must be a positive number of seconds, got {self.idle_timeout_s}")


@dataclass(frozen=True)
class Broadcast:
    """`avatar live`: one session (this machine's microphone) that every visitor watches."""

    viewer_controls: bool = False  # viewers may change the controls and interrupt


Mode = Converse | Broadcast


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8080  # 0 picks a free port (tests)
    portrait: Path | None = None  # the default avatar (None: the bundled portrait)
    size: int = 512  # video width and height
    preset: str = "balanced"  # default preset; a client may ask for another
    driver: Driver = Learned()  # the generator (on its backend; weights and steps from the preset) or the baseline
    device: str = "cpu"  # torch's (generator and renderer): "cpu" or "cuda"
    controls: Controls = Controls()  # initial controls of every session
    max_sessions: int | None = None  # converse: sessions; broadcast: viewers; None: measured at start (capacity)
    mode: Mode = Converse()  # a session per visitor, or one broadcast every visitor watches
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs; none needed on loopback or a LAN
    turn_secret: str | None = field(default=None, repr=False)  # TURN REST shared secret (coturn: static-auth-secret)
    turn_ttl_s: int = 3600  # how long the TURN credentials handed to a visitor stay valid
    allow_origins: tuple[str, ...] = ()  # more page origins allowed to open /ws (e.g. a reverse proxy's)
    setup_timeout_s: float = 15.0  # an answered offer must be connected within this
    lobby_timeout_s: float = 60.0  # a websocket without an offer that sends nothing this long is closed

    def __post_init__(self):
        get_preset(self.preset)
        if isinstance(self.driver, Learned) and (self.driver.checkpoint or self.driver.sampler_options()):
            raise UserError("a live session takes its generator's weights and steps from its preset "
                            "(engine/stream/presets.py); pick one with --preset")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise UserError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise UserError(f"ICE server {url!r} must be a stun:, turn: or turns: URL (e.g. stun:stun.example.org:3478)")
        if any(url.startswith("turn") for url in self.ice_servers) and not self.turn_secret:
            raise UserError("a TURN server needs the shared secret it was configured with (coturn: use-auth-secret, "
                            "static-auth-secret); put it in a file for --turn-secret-file, or in AVATAR_TURN_SECRET")
        for origin in self.allow_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise UserError(f"--allow-origin {origin!r} must be an origin, a scheme and a host: e.g. "
                                "https://avatar.example.org or http://10.0.0.5:8080")
        for name in ("setup_timeout_s", "lobby_timeout_s", "turn_ttl_s"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")


def turn_credentials(secret: str, name: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """Short-lived TURN credentials, the TURN REST convention coturn checks with use-auth-secret:
    username "<expiry unix time>:<name>", credential base64(HMAC-SHA1(secret, username))."""
    username = f"{int(time.time() if now is None else now) + ttl_s}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class RateLimit:
    """A token bucket: `burst` at once, then one more every `every_s` seconds."""

    def __init__(self, burst: int, every_s: float):
        self.burst, self.every_s = burst, every_s
        self._tokens, self._clock = float(burst), time.monotonic()

    def take(self) -> float:
        """0 if allowed (a token is spent), else the seconds until the next token."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._clock) / self.every_s)
        self._clock = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) * self.every_s


def allowed_hosts(config: ServerConfig) -> frozenset[str]:
    """Host names a request may carry: the bound address (every interface's, and this machine's name, when
    bound to all), localhost and the --allow-origin hosts. Anything else, such as evil.example rebound
    to our address by its DNS (a page of that site reaching us), is refused."""
    hosts = {*LOOPBACK_HOSTS, *(urlsplit(origin).hostname for origin in config.allow_origins)}
    if config.host in WILDCARD_HOSTS:
        hosts |= {*local_addresses(), socket.gethostname(), socket.getfqdn()}
    else:
        hosts.add(config.host)
    return frozenset(h.lower() for h in hosts)


def exposed(host: str) -> bool:
    """Whether listening on `host` reaches beyond this machine (a host name is assumed to)."""
    if host in WILDCARD_HOSTS:
        return True
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() != "localhost"


def local_addresses() -> set[str]:
    from aioice.ice import get_host_addresses

    return {*get_host_addresses(use_ipv4=True, use_ipv6=True), *LOOPBACK_HOSTS[1:]}


def _host_name(host_header: str) -> str | None:
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


@dataclass
class _Counters:
    visitors: int = 0
    refused_full: int = 0
    refused_busy: int = 0  # the lobby was full
    timed_out: int = 0  # lobby, set-up and idle timeouts
    errors: dict = field(default_factory=dict)


class AvatarServer:
    """The server; `broadcast` (a running Session) switches it to broadcast mode."""

    def __init__(self, config: ServerConfig, broadcast: Session | None = None, models: StepRegistry | None = None):
        """models: the generators sessions run (default: config's backend and device, one thread each, no
        exported backend unless its graphs' `prepare` came with it: engine.server.run passes one)."""
        self.config = config
        self._own_models = models is None
        self.models = models or StepRegistry(backend_of(config), config.device)
        # batched sessions make their chunks in phase groups, so their calls meet (engine.batch.PhaseGroups)
        # (one a core on a CPU; on a GPU one, the biggest batches: the device runs a call at a time anyway)
        self.phases = None if not self.models.batching else PhaseGroups(1 if config.device != "cpu" else None)
        if (broadcast is None) != isinstance(config.mode, Converse):
            raise ValueError(f"{config.mode} needs {'no' if broadcast is None else 'a'} broadcast session: "
                             "Broadcast() serves the one session it is given, Converse() makes one per visitor")
        self.mode = "converse" if broadcast is None else "broadcast"  # the protocol's name of config.mode
        self.relay = None if broadcast is None else FrameRelay(broadcast)
        self.max_sessions = config.max_sessions  # measured at start when None
        self.capacity: capacity.Capacity | None = None  # that measurement
        self.visitors: set[Visitor] = set()  # those holding a session or a viewer slot
        self.lobby: set[Visitor] = set()  # those connected without one
        self.hosts = allowed_hosts(config)
        self.counters = _Counters()
        self._ids = itertools.count(1)
        self._renderers: OrderedDict[str, tuple[Renderer, dict]] = OrderedDict()
        self._default_renderer: Renderer | None = None
        self._batched_renderers: weakref.WeakKeyDictionary[Renderer, BatchedRenderer] = weakref.WeakKeyDictionary()
        self.render_pool: RenderPool | None = None  # batched sessions' render workers on a CPU (started by `start`)
        # Portraits are analysed on their own thread: queued on the default executor they delayed every
        # visitor's session set-up behind them (8.2 s behind 40 uploads). One thread: analysis is serial anyway.
        self._upload_executor = ThreadPoolExecutor(1, thread_name_prefix="avatar-upload")
        self._building: dict[str, asyncio.Future] = {}  # portraits being analysed or waiting, by content hash
        self.upload_rate = RateLimit(*UPLOAD_RATE_ALL)  # new portraits to analyse (a cached one costs nothing)
        self._server = None

    # --- lifetime ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the default avatar and model, measure what the machine sustains if not told, then listen.
        Raises UserError for a bad portrait."""
        from engine.assets import DEFAULT_PORTRAIT

        loop = asyncio.get_running_loop()
        config = self.config
        preset = get_preset(config.preset)
        if self.relay is None or self.max_sessions is None:  # broadcast: a renderer only to measure with
            renderer = await loop.run_in_executor(
                None, Renderer.from_photo, config.portrait or DEFAULT_PORTRAIT, config.size, config.device)
            model = await loop.run_in_executor(None, self.generator_for, preset)
            if self.relay is None:
                self._default_renderer = renderer
        if self.relay is not None:
            self.relay.start()
        elif self.models.batching and config.device == "cpu":
            self.render_pool = RenderPool()
            # its workers start now and hold the default avatar, not on the first visitor's first frames
            await loop.run_in_executor(None, self.render_pool.warm, self._default_renderer)
        if self.max_sessions is None:
            measured = await loop.run_in_executor(
                None, capacity.measure, renderer, model, preset, self.mode == "broadcast")
            self.max_sessions, self.capacity = measured.sessions, measured
        self._server = await serve(
            self._visit, config.host, config.port, process_request=self._http, create_connection=_Connection,
            max_size=protocol.MAX_MESSAGE_BYTES, server_header="avatar-engine",
        )
        log.info("serving on %s (%s mode, up to %d %s)", self.url, self.mode, self.max_sessions,
                 "sessions" if self.mode == "converse" else "viewers")
        if exposed(config.host):
            log.warning("listening on %s: anyone who can reach port %d can use this server, which has no login and "
                        "no TLS; to serve beyond this machine, put it behind an HTTPS reverse proxy that "
                        "authenticates visitors (README: threat model)", config.host or "every interface", self.port)

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
        await asyncio.gather(*(v.close() for v in list(self.visitors | self.lobby)))
        if self.relay is not None:
            await self.relay.close()
        self._upload_executor.shutdown(wait=False, cancel_futures=True)
        if self.render_pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.render_pool.close)
        if self._own_models:
            self.models.close()

    def generator_for(self, preset: Preset):
        """The chunk step a preset runs (loaded once, shared by all its sessions), or None for the baseline."""
        return None if isinstance(self.config.driver, Baseline) else self.models.get(preset.weights, preset.steps)

    def frames_of(self, renderer: Renderer) -> Renderer | BatchedRenderer:
        """What a session renders with: its avatar's renderer, or where the generator is batched (the registry's
        choice) one BatchedRenderer per avatar, shared by its sessions (engine.render.batching), rendering on a
        CPU in the render workers (a lane each: in this process two renders at once make 1.3 renders' worth,
        the GIL; benchmarks/results/stage_overlap.md)."""
        if not self.models.batching:
            return renderer
        if renderer not in self._batched_renderers:  # the event loop's thread only: no race
            self._batched_renderers[renderer] = BatchedRenderer(renderer, pool=self.render_pool)
        return self._batched_renderers[renderer]

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    # --- shared resources --------------------------------------------------------------------
    async def renderer_for(self, upload: bytes | None) -> tuple[Renderer, dict]:
        """The default renderer, or one for an uploaded photo (cached by content) with what the client is told
        about it; PortraitError if unusable, ProtocolError("busy") if too many are being analysed."""
        if upload is None:
            return self._default_renderer, {}
        key = hashlib.sha256(upload).hexdigest()
        if key in self._renderers:
            self._renderers.move_to_end(key)
            return self._renderers[key]
        if key not in self._building:  # the same photo sent by several visitors at once is analysed once
            if len(self._building) >= UPLOADS_QUEUED:
                raise protocol.ProtocolError("busy", f"the server is analysing {UPLOADS_QUEUED} other portraits; "
                                             "send yours again in a few seconds")
            if wait := self.upload_rate.take():
                raise protocol.ProtocolError("rate_limited", f"too many new portraits right now; send yours again "
                                             f"in {wait:.0f} s")
            building = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
                self._upload_executor, self._build_renderer, upload))
            building.add_done_callback(lambda _: self._building.pop(key, None))
            self._building[key] = building
        built = await asyncio.shield(self._building[key])  # one visitor leaving does not cancel the others' wait
        self._renderers[key] = built
        while len(self._renderers) > RENDERER_CACHE:
            self._renderers.popitem(last=False)
        return built

    def _build_renderer(self, upload: bytes) -> tuple[Renderer, dict]:
        source = "the uploaded portrait"
        image = decode_image(upload, source)
        portrait = analyze_portrait(image, self.config.size, source=source)
        renderer = Renderer(Rig(portrait)).eval().to(resolve_device(self.config.device))
        return renderer, {"height": image.shape[0], "width": image.shape[1], "notes": list(portrait.notes)}

    def ice_for_clients(self, name: str) -> list[dict]:
        """The same STUN/TURN servers as the browser's RTCIceServer dicts; TURN ones with credentials
        for `name` that expire after turn_ttl_s."""
        c = self.config
        auth = {}
        if c.turn_secret:
            username, credential = turn_credentials(c.turn_secret, name, c.turn_ttl_s)
            auth = {"username": username, "credential": credential}
        return [{"urls": url, **(auth if url.startswith("turn") else {})} for url in c.ice_servers]

    def ice_configuration(self) -> RTCConfiguration:
        """Only the configured servers: aiortc's default is a public STUN host, useless on loopback."""
        return RTCConfiguration(iceServers=[RTCIceServer(urls=s["urls"], username=s.get("username"),
                                                         credential=s.get("credential"))
                                            for s in self.ice_for_clients(TURN_NAME_SERVER)])

    # --- HTTP ----------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return _text(405, f"{quote(request.method)} is not served here; only GET and HEAD\n",
                         ("Allow", "GET, HEAD"))
        host = request.headers.get("Host", "")
        if _host_name(host) not in self.hosts:
            log.warning("refused a request for host %s (not this server's; see --allow-origin)", quote(host))
            return _text(403, f"this server does not answer for host {quote(host)}; open it at {self.url}, or start "
                              "it with --allow-origin https://<that host> if it is reached through that name\n")
        path = urlsplit(request.path).path
        if path == "/ws":
            if request.method == "HEAD":
                return _text(405, "/ws is a websocket: open it with GET and an Upgrade header\n",
                             ("Allow", "GET"))
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_allowed(origin, host):
                log.warning("refused a websocket from origin %s (not this server's; see --allow-origin)",
                            quote(origin))
                return _text(403, f"origin {quote(origin)} may not open /ws; start the server with "
                                  "--allow-origin <that origin> to allow it\n")
            return None  # the websocket handshake goes on
        if path == "/health":
            response = _response(200, "application/json", json.dumps(self.health()).encode())
        elif path in STATIC:
            name, kind = STATIC[path]
            try:
                body = (WEB_DIR / name).read_bytes()
            except OSError:
                return _text(500, f"the page's {name} is missing from {WEB_DIR}; reinstall avatar-engine "
                                  "(its wheel carries client/web)\n")
            response = _response(200, f"{kind}; charset=utf-8", body)
        else:
            response = _text(404, f"nothing at {quote(path)}; the page is at /\n")
        if request.method == "HEAD":  # the headers GET would get (Content-Length included), no body
            response = dataclasses.replace(response, body=b"")
        return response

    def _origin_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return (parts.scheme in ("http", "https") and parts.netloc == host) or origin in self.config.allow_origins

    def health(self) -> dict:
        return {"status": "ok", "mode": self.mode, "sessions": len(self.visitors),
                "max_sessions": self.max_sessions, "lobby": len(self.lobby), "visitors": self.counters.visitors,
                "refused_full": self.counters.refused_full, "refused_busy": self.counters.refused_busy,
                "timed_out": self.counters.timed_out, "errors": dict(self.counters.errors)}

    # --- visitors ------------------------------------------------------------------------------
    async def _visit(self, ws: ServerConnection) -> None:
        visitor = Visitor(self, ws, next(self._ids))
        self.counters.visitors += 1
        if len(self.lobby) >= MAX_LOBBY:
            self.counters.refused_busy += 1
            await visitor.refuse(protocol.ProtocolError(
                "busy", f"{MAX_LOBBY} connections are already waiting to start; try again later", fatal=True))
            await ws.close()
            return
        self.lobby.add(visitor)
        try:
            await visitor.run()
        finally:
            await visitor.close()

    def count_error(self, code: str) -> None:
        self.counters.errors[code] = self.counters.errors.get(code, 0) + 1


class _Connection(ServerConnection):
    """A connection that holds back what a client sends after its first request until that is answered.

    websockets parses whatever follows the request as websocket frames: a second, pipelined request
    failed that parse, and neither got an answer (and an AssertionError was logged). Now the first is
    answered; after an HTTP response the connection closes (pipelining refused: the client sends the rest
    again on a new connection), and after a websocket upgrade what was held back is read as frames.
    """

    MAX_HELD = 64 * 2**10

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tail = b""  # the last bytes of the request seen so far (its end may span two reads)
        self._held: bytearray | None = None  # after the request's end, until it is answered; then None again
        self._answered = False

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return super().data_received(data)
        if self._held is not None:
            self._held += data[: self.MAX_HELD - len(self._held)]
            return
        end = (self._tail + data).find(b"\r\n\r\n")
        if end < 0:
            self._tail = (self._tail + data)[-3:]
            return super().data_received(data)
        cut = end + 4 - len(self._tail)
        self._held = bytearray(data[cut:][: self.MAX_HELD])
        super().data_received(data[:cut])

    async def handshake(self, *args, **kwargs) -> None:
        await super().handshake(*args, **kwargs)
        held, self._answered = bytes(self._held or b""), True
        if held and self.protocol.state is OPEN:
            super().data_received(held)


def _response(status: int, content_type: str, body: bytes, *headers: tuple[str, str]) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                       ("Connection", "close"), *headers])  # one request per connection (see _Connection)
    return Response(status, "OK" if status == 200 else "Error", headers, body)


def _text(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return _response(status, "text/plain; charset=utf-8", text.encode(), *headers)


class Visitor:
    """One websocket connection: its portrait, peer connection, session (converse) or viewer slot."""

    def __init__(self, server: AvatarServer, ws: ServerConnection, number: int):
        self.server, self.ws, self.name = server, ws, f"visitor {number}"
        self.upload: bytes | None = None
        self.pc: RTCPeerConnection | None = None
        self.relay: FrameRelay | None = None
        self.viewer: Viewer | None = None
        self.channel = None
        self.motion = MotionFeed(VIDEO_TICKS, VIDEO_CLOCK)  # off until the client asks on its channel
        self.started = time.monotonic()
        self.offered: float | None = None  # when its offer was answered
        self.connected: float | None = None  # when its peer connection came up
        self.heard: float | None = None  # the last audible audio from its microphone
        self.handling = False  # a message of its is being handled (an upload may wait its turn a while)
        self.last_message = self.started  # the lobby timeout runs from here
        self.errors = 0
        self.upload_rate = RateLimit(*UPLOAD_RATE)
        self._tasks: set[asyncio.Task] = set()
        self._ended = asyncio.Event()
        self._closed = False

    @property
    def session(self) -> Session | None:
        return None if self.relay is None else self.relay.session

    async def run(self) -> None:
        config, server = self.server.config, self.server
        await self._send({"type": "hello", "mode": server.mode, "presets": list(PRESETS),
                          "preset": config.preset, "emotions": list(EMOTIONS),
                          "uploads": isinstance(config.mode, Converse) and config.mode.uploads,
                          "max_upload_bytes": protocol.MAX_UPLOAD_BYTES, "controls": vars(config.controls),
                          "viewer_controls": isinstance(config.mode, Converse) or config.mode.viewer_controls,
                          "ice_servers": server.ice_for_clients(self.name.replace(" ", "-"))})
        receiving = asyncio.create_task(self._receive())
        watching = asyncio.create_task(self._watch())
        ended = asyncio.create_task(self._ended.wait())
        await asyncio.wait({receiving, watching, ended}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, watching, ended):
            task.cancel()

    async def _receive(self) -> None:
        try:
            async for text in self.ws:
                self.handling = True
                try:
                    await self._handle(protocol.parse_signal(text))
                except protocol.ProtocolError as err:
                    if not await self.refuse(err):
                        return
                finally:
                    self.handling, self.last_message = False, time.monotonic()
        except ConnectionClosed:
            pass

    async def _watch(self) -> None:
        """Let go of a visitor that holds the server without using it: no offer (lobby), an offer that never
        connects (set-up), or (converse) a microphone that sends nothing audible (idle)."""
        config = self.server.config
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if self.pc is None and not self.handling and now - self.last_message > config.lobby_timeout_s:
                error = protocol.ProtocolError("timeout", f"nothing came for {config.lobby_timeout_s:g} s, and no "
                                               "offer; connect again when you are ready to start", fatal=True)
            elif self.offered is not None and self.connected is None and now - self.offered > config.setup_timeout_s:
                error = protocol.ProtocolError("timeout", f"the media connection did not come up within "
                                               f"{config.setup_timeout_s:g} s of the answer; check that UDP can "
                                               "reach the server (or configure --ice-server)", fatal=True)
            elif (self.heard is not None and isinstance(config.mode, Converse)
                  and now - self.heard > config.mode.idle_timeout_s):
                error = protocol.ProtocolError("idle", f"nothing was heard from your microphone for "
                                               f"{config.mode.idle_timeout_s:g} s; the session was ended to free its "
                                               "place; start again to talk", fatal=True)
            else:
                continue
            self.server.counters.timed_out += 1
            await self.refuse(error)
            return

    async def refuse(self, err: protocol.ProtocolError, on_channel: bool = False) -> bool:
        """Count, log (a visitor's first few) and send an error (a data channel's back on the channel, unless
        fatal); False if the connection must now close."""
        self.server.count_error(err.code)
        self.errors += 1
        where = "data channel: " if on_channel else ""
        if self.errors <= LOGGED_ERRORS:
            log.warning("%s: %s%s: %s", self.name, where, err.code, err)
        elif self.errors == LOGGED_ERRORS + 1:
            log.warning("%s: more errors; counting them without logging (see /health)", self.name)
        if self.errors >= MAX_ERRORS and not err.fatal:
            err = protocol.ProtocolError(err.code, f"{err} (that was {MAX_ERRORS} errors: closing this "
                                         "connection; fix the client and connect again)", fatal=True)
        if on_channel and not err.fatal:
            self._channel_send(json.loads(err.to_message()))
            return True
        try:
            await self.ws.send(err.to_message())
        except ConnectionClosed:
            return False
        return not err.fatal

    async def _handle(self, message) -> None:
        if isinstance(message, protocol.PortraitUpload):
            await self._take_portrait(message.data)
        else:
            await self._answer(message)

    async def _take_portrait(self, data: bytes) -> None:
        server = self.server
        if not (isinstance(server.config.mode, Converse) and server.config.mode.uploads):
            raise protocol.ProtocolError("uploads_disabled", "this server does not take portraits; "
                                         "it animates the portrait it was started with")
        if self.pc is not None:
            raise protocol.ProtocolError("bad_portrait", "send the portrait before the offer")
        if wait := self.upload_rate.take():
            raise protocol.ProtocolError("rate_limited", f"too many portraits from one connection; "
                                         f"send the next in {wait:.0f} s")
        try:
            _, info = await server.renderer_for(data)
        except UserError as err:
            raise protocol.ProtocolError("bad_portrait", str(err)) from None
        self.upload = data
        await self._send({"type": "portrait", **info})

    async def _answer(self, offer: protocol.Offer) -> None:
        server = self.server
        if self.pc is not None:
            raise protocol.ProtocolError("bad_offer", "one offer per connection; reconnect to start again", fatal=True)
        kinds = offer_media(offer.sdp)
        if "video" not in kinds:
            raise protocol.ProtocolError("bad_offer", "the offer receives no video; add a video transceiver "
                                         "(recvonly) to the peer connection before making the offer", fatal=True)
        if VIDEO_CODEC not in offer_video_codecs(offer.sdp):
            raise protocol.ProtocolError("bad_offer", f"the offer's video does not take {VIDEO_CODEC}, the codec the "
                                         "avatar is sent in (every WebRTC browser can receive it); do not remove it "
                                         "with setCodecPreferences", fatal=True)
        if len(server.visitors) >= server.max_sessions:
            server.counters.refused_full += 1
            raise protocol.ProtocolError(
                "full", f"the server is full ({server.max_sessions} of {server.max_sessions} "
                f"{'sessions' if server.mode == 'converse' else 'viewers'} in use); try again later", fatal=True)
        server.lobby.discard(self)
        server.visitors.add(self)  # the slot is taken now, before anything awaits
        self.pc = pc = RTCPeerConnection(server.ice_configuration())  # from here on the lobby timeout is over
        if server.mode == "converse":
            try:
                preset = get_preset(offer.preset or server.config.preset)
            except UserError as err:
                raise protocol.ProtocolError("bad_offer", str(err), fatal=True) from None
            renderer, _ = await server.renderer_for(self.upload)
            renderer = server.frames_of(renderer)
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, server.generator_for, preset)
            session = await loop.run_in_executor(
                None, lambda: Session(renderer, model, preset, server.config.controls, options=LIVE_OPTIONS,
                                      phases=server.phases))
            self.relay = FrameRelay(session)
        else:
            self.relay = server.relay
        self.viewer = self.relay.subscribe()
        self.viewer.on_video = self.motion.shown
        # The session's clock starts now, before any audio can arrive: a clock started on "connected"
        # can start after the first packets, and the audio queued meanwhile stays as latency for good.
        self.relay.start()

        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)
        try:
            sdp = vet_candidates(offer.sdp, self.ws.remote_address[0], relays=bool(server.config.ice_servers))
            self.viewer.add_to(pc, audio="audio" in kinds)  # before the offer is applied: video is VP8 alone
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as err:  # aiortc raises many types for SDP it cannot use
            raise protocol.ProtocolError("bad_offer", f"cannot use this offer: {str(err)[:200] or type(err).__name__};"
                                         " send a WebRTC offer that receives video", fatal=True) from None
        await self._send({"type": "answer", "sdp": pc.localDescription.sdp})
        self.offered = time.monotonic()
        log.info("%s: negotiated (%s, preset %s)", self.name, server.mode,
                 self.session.preset.name if self.session else "-")

    def _on_track(self, track) -> None:
        if track.kind == "audio" and self.server.mode == "converse":
            self._spawn(pump_audio(track, self.session, self._heard))

    def _heard(self) -> None:
        self.heard = time.monotonic()

    def _on_channel(self, channel) -> None:
        self.channel = self.motion.channel = channel
        channel.on("message", self._on_channel_message)

    def _on_channel_message(self, text) -> None:
        try:
            message = protocol.parse_channel(text)
            if isinstance(message, protocol.SetMotion):  # a viewer's own stream: allowed in a broadcast too
                self.motion.enabled = message.enabled
                return
            if isinstance(self.server.config.mode, Broadcast) and not self.server.config.mode.viewer_controls:
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
            self._spawn(self._refuse_on_channel(err))

    async def _refuse_on_channel(self, err: protocol.ProtocolError) -> None:
        if not await self.refuse(err, on_channel=True):  # too many: the visitor's connection ends
            self._ended.set()

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected = self.heard = time.monotonic()  # the idle clock starts with the media
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
                "viewers": len(self.relay.viewers), "motion_sent": self.motion.sent,
                "motion_dropped": self.motion.dropped,
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
        """Free everything this visitor held (idempotent). Its slot is given back first, before anything
        awaits: a visitor that reconnects at once must not find its own old session still holding it."""
        if self._closed:
            return
        self._closed = True
        server = self.server
        server.lobby.discard(self)
        held = self in server.visitors
        server.visitors.discard(self)
        for task in list(self._tasks):
            task.cancel()
        if self.viewer is not None:
            self.relay.unsubscribe(self.viewer)
        if self.pc is not None:
            await self.pc.close()
        if self.relay is not None and server.mode == "converse":
            await self.relay.close()
        if held:
            log.info("%s: left after %.0f s; %d in use", self.name, time.monotonic() - self.started,
                     len(server.visitors))
        await self.ws.close()


def offer_media(sdp: str) -> set[str]:
    """The media kinds an offer has m-lines for ("audio", "video", "application")."""
    return {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}


def offer_video_codecs(sdp: str) -> set[str]:
    """The codec names (e.g. "VP8", "H264") an offer's video m-lines list."""
    names, video = set(), False
    for line in sdp.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video")
        elif video and line.startswith("a=rtpmap:") and len(fields := line.split()) > 1:
            names.add(fields[1].split("/")[0].upper())
    return names


def vet_candidates(sdp: str, peer: str, relays: bool = False) -> str:
    """The offer's ICE candidates the server may check, rewritten where needed; the others are dropped.

    mDNS host candidates ("<uuid>.local", which Firefox and Chrome use to hide local addresses) get
    addresses aiortc can reach (aioice cannot resolve them and fails at once). A browser's host candidate
    lives on the interface it reached us from, so a remote peer's get the address its websocket came from;
    a peer on this machine (loopback) may sit on any of our interfaces, so each candidate is offered once
    per local address and ICE's checks keep the pair that answers.

    Every candidate must then point at the peer's own address (any of ours, for a peer on loopback), or be
    a relay when TURN is configured: a forged offer must not make the server send STUN wherever it likes.
    """
    loopback = ipaddress.ip_address(peer).is_loopback
    ours = sorted(local_addresses() - set(LOOPBACK_HOSTS)) if loopback else []
    allowed = {peer, *ours} if loopback else {peer}
    lines, kept = [], 0
    for line in sdp.splitlines():
        fields = line.split()
        if not line.startswith("a=candidate:"):
            lines.append(line)
            continue
        if len(fields) < 8 or kept >= MAX_CANDIDATES:
            continue
        addresses = (ours or [peer]) if fields[4].lower().endswith(".local") else [fields[4]]
        for n, address in enumerate(addresses):
            if address in allowed or (relays and fields[7] == "relay"):
                foundation = fields[0] if n == 0 else f"{fields[0]}{n}"  # one foundation per address
                lines.append(" ".join([foundation, *fields[1:4], address, *fields[5:]]))
                kept += 1
    return "\r\n".join(lines) + "\r\n"


def configure(config: ServerConfig, threads: int) -> None:
    """Before anything slow: torch and OpenCV intra-op threads for every session worker (DESIGN.md §13:
    1 per real-time worker is stable), and a UserError if the backend or device cannot run here."""
    set_threads(threads)
    resolve_device(config.device)
    if isinstance(config.driver, Learned):
        backends.check(config.driver.backend, config.device)


def backend_of(config: ServerConfig) -> str:
    """Where the config's generator runs (the baseline has none: its registry is never asked)."""
    return config.driver.backend if isinstance(config.driver, Learned) else "auto"
