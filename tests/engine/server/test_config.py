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
