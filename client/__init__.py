"""Clients of `avatar serve` / `avatar live`: the browser page (web/) and a Python client that connects
the same way (`avatar client`): it streams a file or a microphone, records the reply and measures it."""
