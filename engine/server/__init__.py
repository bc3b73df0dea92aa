"""Serving live sessions over WebRTC: the signaling protocol, the media tracks and the server
(`avatar serve`, `avatar live`; DESIGN.md §10)."""
