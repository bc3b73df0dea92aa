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


def test_browsers_get_the_servers_ice_and_turn_credentials():
    server = AvatarServer(ServerConfig(ice_servers=("stun:s.example:3478", "turn:t.example:3478"),
                                       ice_username="me", ice_credential="secret"))
    assert server.ice_for_clients() == [{"urls": "stun:s.example:3478"},
                                         {"urls": "turn:t.example:3478", "username": "me", "credential": "secret"}]
    assert [s.urls for s in server.ice_configuration().iceServers] == ["stun:s.example:3478", "turn:t.example:3478"]
    assert AvatarServer(ServerConfig()).ice_configuration().iceServers == []  # never aiortc's public default
