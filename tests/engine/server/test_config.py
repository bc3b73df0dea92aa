"""Server settings: checked when made, and the ICE servers handed to browsers carry TURN credentials."""

import pytest

from engine.errors import UserError
from engine.server.app import AvatarServer, ServerConfig


def test_bad_settings_are_named():
    with pytest.raises(UserError, match="stun:, turn: or turns:"):
        ServerConfig(ice_servers=("stun.example.org",))
    with pytest.raises(UserError, match="--max-sessions must be at least 1"):
        ServerConfig(max_sessions=0)
    with pytest.raises(UserError, match="unknown preset"):
        ServerConfig(preset="turbo")


def test_browsers_get_short_lived_turn_credentials_derived_from_the_secret():
    """TURN REST (what coturn's use-auth-secret checks): "<expiry>:<name>" and base64(HMAC-SHA1(secret, it)).
    The long-term password went to every visitor's hello (and sat in `ps`); these expire."""
    import base64
    import subprocess
    import time

    from engine.server.app import turn_credentials

    server = AvatarServer(ServerConfig(ice_servers=("stun:s.example:3478", "turn:t.example:3478"),
                                       turn_secret="north", turn_ttl_s=600))
    stun, turn = server.ice_for_clients("visitor-7")
    assert stun == {"urls": "stun:s.example:3478"}
    expiry, name = turn["username"].split(":")
    assert name == "visitor-7" and 590 < int(expiry) - time.time() <= 600
    # the HMAC checked by an independent implementation (openssl), as coturn would
    openssl = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", "north", "-binary"], input=turn["username"].encode(),
                             capture_output=True, check=True).stdout
    assert turn["credential"] == base64.b64encode(openssl).decode()
    assert turn_credentials("north", "a", 60, now=1000) == ("1060:a", turn_credentials("north", "a", 60, now=1000)[1])
    servers = server.ice_configuration().iceServers
    assert [s.urls for s in servers] == ["stun:s.example:3478", "turn:t.example:3478"]
    assert servers[1].username.endswith(":avatar-server") and servers[1].credential
    assert "north" not in repr(server.config)
    assert AvatarServer(ServerConfig()).ice_configuration().iceServers == []  # never aiortc's public default
    with pytest.raises(UserError, match="shared secret"):
        ServerConfig(ice_servers=("turn:t.example:3478",))


def test_allowed_hosts_are_the_bound_address_localhost_and_allowed_origins():
    from engine.server.app import allowed_hosts

    hosts = allowed_hosts(ServerConfig(host="127.0.0.1", allow_origins=("https://Avatar.Example.org",)))
    assert {"127.0.0.1", "localhost", "::1", "avatar.example.org"} <= hosts and "evil.example" not in hosts
    with pytest.raises(UserError, match="must be an origin"):
        ServerConfig(allow_origins=("avatar.example.org",))


def test_listening_beyond_loopback_is_called_exposed():
    """--host 0.0.0.0 printed no warning that the unauthenticated server is reachable by anyone."""
    from engine.server.app import exposed

    assert exposed("0.0.0.0") and exposed("::") and exposed("192.168.1.5") and exposed("avatar.example.org")
    assert not exposed("127.0.0.1") and not exposed("::1") and not exposed("localhost")


def test_the_default_max_sessions_is_measured_on_this_machine():
    """The constant default (4) admitted twice what two cores sustain over WebRTC."""
    from engine.assets import DEFAULT_PORTRAIT
    from engine.render.renderer import Renderer
    from engine.server import capacity
    from engine.stream import get_preset

    renderer = Renderer.from_photo(DEFAULT_PORTRAIT, 128)
    measured = capacity.measure(renderer, None, get_preset("balanced"))
    assert measured.sessions >= 1 and measured.load > 0 and measured.cores == capacity.available_cores()
    assert measured.sessions == max(1, int(measured.cores * capacity.CORE_BUDGET / measured.load))
    assert "measured" in measured.describe()
    viewers = capacity.measure(renderer, None, get_preset("balanced"), viewers=True)
    assert viewers.sessions >= 1
