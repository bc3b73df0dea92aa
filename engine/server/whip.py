"""Publishing a broadcast to a media server over WHIP (RFC 9725), for audiences beyond one machine.

The publisher is one more subscriber of the broadcast's `FrameRelay`: its tracks are a viewer's tracks,
sent over one RTCPeerConnection to the SFU, which fans them out to every viewer it has. One connection:
gather every ICE candidate, POST the offer once (`application/sdp`, `Authorization: Bearer` when a token is
given), expect 201 with the answer and a `Location` (the session's resource, relative to the endpoint), and
DELETE that resource to end. No trickle and no ICE restart: when the connection fails or the SFU hangs up,
the publisher starts over with a new POST, backing off between tries, until it is closed.

HTTP is the standard library's, run on the default executor: one request per connection, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from engine.errors import UserError
from engine.server.media import FrameRelay, Viewer

log = logging.getLogger("avatar.whip")

HTTP_TIMEOUT_S = 10.0  # one WHIP request
CONNECT_TIMEOUT_S = 15.0  # an answered offer must be connected within this
BACKOFF_S = (1.0, 30.0)  # wait before the first retry, doubling up to the second
BODY_SHOWN = 200  # characters of an error body quoted in a message


class WhipError(UserError):
    """The WHIP endpoint refused or could not be reached; the message names the URL and what it said."""


@dataclass(frozen=True)
class WhipTarget:
    url: str  # the WHIP endpoint (http or https)
    token: str | None = field(default=None, repr=False)  # bearer token, when the endpoint asks for one

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"--publish-whip {self.url!r} is not an http(s) URL; pass the WHIP endpoint the "
                            "media server gives, e.g. http://sfu.example.org:7080/whip/endpoint/avatar")

    def headers(self, **more: str) -> dict[str, str]:
        auth = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return {**auth, **more}


def _request(target: WhipTarget, method: str, url: str, body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, dict[str, str], str]:
    """One blocking HTTP request: (status, headers, body text); WhipError when it cannot be made."""
    headers = target.headers(**({"Content-Type": content_type} if content_type else {}))
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
            return reply.status, dict(reply.headers.items()), reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:  # 4xx/5xx: a reply all the same, its body says why
        return err.code, dict(err.headers.items()), err.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WhipError(f"WHIP endpoint {url} cannot be reached ({reason}); check the URL and that the media "
                        "server is running and reachable from here") from None


def _refusal(url: str, status: int, body: str) -> WhipError:
    said = " ".join(body.split())[:BODY_SHOWN] or "no body"
    hint = {401: "the token is missing or wrong: pass --whip-token", 403: "the token is wrong or not allowed "
            "to publish here: check --whip-token", 404: "no such endpoint: check the URL (simple-whip-server "
            "needs it created first)"}.get(status, "see the media server's log")
    return WhipError(f"WHIP endpoint {url} answered {status} ({said}); {hint}")


async def post_offer(target: WhipTarget, sdp: str) -> tuple[str, str]:
    """POST the offer; (the session resource's absolute URL, the answer SDP). WhipError on anything else."""
    status, headers, body = await asyncio.get_running_loop().run_in_executor(
        None, _request, target, "POST", target.url, sdp.encode(), "application/sdp")
    if status != 201:
        raise _refusal(target.url, status, body)
    location = next((v for k, v in headers.items() if k.lower() == "location"), None)
    if not location:
        raise WhipError(f"WHIP endpoint {target.url} answered 201 without a Location header; it is not a WHIP "
                        "endpoint (RFC 9725) or is misconfigured")
    if not body.lstrip().startswith("v=0"):
        raise WhipError(f"WHIP endpoint {target.url} answered 201 but its body is not an SDP answer "
                        f"({' '.join(body.split())[:BODY_SHOWN] or 'empty'})")
    return urljoin(target.url, location), body


async def delete_resource(target: WhipTarget, resource: str) -> None:
    """End the session at the SFU (logged, not raised: the stream is ending anyway)."""
    try:
        status, _, body = await asyncio.get_running_loop().run_in_executor(None, _request, target, "DELETE", resource)
    except WhipError as err:
        log.warning("%s", err)
        return
    if status == 404:  # the SFU ended it first (it hung up, or saw the connection fail)
        log.info("WHIP DELETE %s: already gone at the SFU", resource)
    elif status >= 300:
        log.warning("WHIP DELETE %s answered %d (%s)", resource, status, " ".join(body.split())[:BODY_SHOWN])


class _Connection:
    """One published peer connection: a relay subscriber's tracks, the resource that ends it."""

    def __init__(self, relay: FrameRelay, ice: RTCConfiguration):
        self.relay = relay
        self.viewer: Viewer = relay.subscribe()
        self.pc = RTCPeerConnection(ice)
        self.resource: str | None = None
        self.ended = asyncio.Event()  # failed, or closed by the far end
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)
        self.viewer.add_to(self.pc, direction="sendonly")  # VP8, and the SFU's keyframe requests reach the relay

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.ended.set()

    async def open(self, target: WhipTarget) -> None:
        # aiortc gathers every candidate in setLocalDescription: the one POST carries them all.
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.resource, answer = await post_offer(target, self.pc.localDescription.sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except ValueError as err:
            raise WhipError(f"WHIP endpoint {target.url} sent an answer this publisher cannot use ({err}); it must "
                            "accept VP8 or H.264 video and Opus audio") from None
        try:
            await asyncio.wait_for(self.connected.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise WhipError(f"WHIP session at {target.url} did not connect within {CONNECT_TIMEOUT_S:.0f} s (ICE "
                            f"state {self.pc.iceConnectionState}); the media server's UDP ports must be reachable "
                            "from here, or give a TURN server with --ice-server") from None

    async def close(self, target: WhipTarget) -> None:
        """DELETE before closing the peer: an SFU that sees the peer go first may drop the resource itself."""
        self.relay.unsubscribe(self.viewer)
        if self.resource is not None:
            await delete_resource(target, self.resource)
        await self.pc.close()


class WhipPublisher:
    """Publishes `relay`'s broadcast to a WHIP endpoint and keeps it published until `close()`.

    `start()` makes the first connection and raises WhipError if it fails (a wrong URL or token should stop
    the command at once). After that a failed or hung-up connection is replaced: DELETE the old resource,
    wait (1 s, doubling to 30 s while tries fail), POST a new offer.
    """

    def __init__(self, relay: FrameRelay, target: WhipTarget, ice: RTCConfiguration | None = None,
                 backoff_s: tuple[float, float] = BACKOFF_S):
        self.relay = relay
        self.target = target
        self.ice = ice if ice is not None else RTCConfiguration(iceServers=[])  # not aiortc's public STUN default
        self.backoff_s = backoff_s
        self.connections = 0  # made so far (1 + reconnections)
        self._current: _Connection | None = None
        self._task: asyncio.Task | None = None

    @property
    def pc(self) -> RTCPeerConnection | None:
        """The live peer connection (for stats), None between tries."""
        return None if self._current is None else self._current.pc

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._keep(), name="avatar-whip")

    async def _connect(self) -> None:
        connection = _Connection(self.relay, self.ice)
        try:
            await connection.open(self.target)
        except BaseException:
            await connection.close(self.target)
            raise
        self._current = connection
        self.connections += 1
        log.info("publishing to %s (session %s)", self.target.url, connection.resource)

    async def _keep(self) -> None:
        while True:
            await self._current.ended.wait()
            log.warning("WHIP session %s ended (%s); publishing again", self._current.resource,
                        self._current.pc.connectionState)
            old, self._current = self._current, None
            await old.close(self.target)
            wait = self.backoff_s[0]
            while self._current is None:
                await asyncio.sleep(wait)
                try:
                    await self._connect()
                except WhipError as err:
                    wait = min(2 * wait, self.backoff_s[1])
                    log.warning("%s; trying again in %.0f s", err, wait)

    async def close(self) -> None:
        """Stop republishing, end the session at the SFU (DELETE) and free the connection. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._current is not None:
            current, self._current = self._current, None
            await current.close(self.target)
