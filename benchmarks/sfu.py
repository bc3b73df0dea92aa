"""A real SFU on this machine: Janus (VideoRoom) behind simple-whip-server, started by deploy/janus/run.sh
inside a network namespace of its own, for the WHIP benchmark and tests.

Why a namespace: Janus (libnice) and aioice both leave loopback addresses out of ICE, so a publisher and
an SFU on 127.0.0.1 never connect. A veth pair gives each side a real interface: this process keeps
10.231.N.1, the namespace (Janus and the WHIP server) gets 10.231.N.2. Creating it needs root and `ip netns`;
`unavailable()` says why when it cannot run, so callers can skip with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "deploy" / "janus" / "run.sh"
ROOM = 1234  # deploy/janus/janus.plugin.videoroom.jcfg
WHIP_PORT, JANUS_WS_PORT = 7080, 8188


def unavailable() -> str | None:
    """Why a local SFU cannot start here, or None when it can."""
    if shutil.which("janus") is None:
        return "janus is not installed (Debian: apt-get install janus; make setup does it)"
    if shutil.which("node") is None:
        return "node is not installed (simple-whip-server runs on it)"
    found = [d for d in (Path("/usr/share/simple-whip-server"),
                         ROOT / ".cache/simple-whip-server/usr/share/simple-whip-server") if (d / "src/server.js").exists()]
    if not found:
        return "simple-whip-server is not installed (apt-get install simple-whip-server, or make setup)"
    if shutil.which("ip") is None or os.geteuid() != 0:
        return "a network namespace needs root and iproute2's `ip netns` (Janus and aioice refuse 127.0.0.1)"
    probe = f"avprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here ({made.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


class LocalSfu:
    """Janus + simple-whip-server in a fresh namespace; `endpoint(id, token)` creates a WHIP endpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.ns = f"avsfu{os.getpid() % 100000}"
        net = 1 + os.getpid() % 250  # one /24 per process: parallel runs on one machine do not collide
        self.host_ip, self.sfu_ip = f"10.231.{net}.1", f"10.231.{net}.2"
        self.process: subprocess.Popen | None = None
        self.log = None  # run.sh's output, while it runs

    def start(self, timeout_s: float = 20.0) -> LocalSfu:
        outer, inner = f"{self.ns}a", f"{self.ns}b"
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)  # a leftover of a killed run
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.ns)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{self.sfu_ip}/24", "dev", inner, ns=self.ns)
            _ip("link", "set", inner, "up", ns=self.ns)
            _ip("link", "set", "lo", "up", ns=self.ns)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log = open(self.run_dir / "run.log", "w")  # noqa: SIM115 (open while the servers run; stop() closes it)
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, str(RUN_SH)], stdout=self.log, stderr=subprocess.STDOUT,
                env={**os.environ, "RUN_DIR": str(self.run_dir), "ICE_ENFORCE": inner,
                     "DEBUG": "whip:info,whip:error"},  # it then logs each session's start and end
                start_new_session=True)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deploy/janus/run.sh exited ({self.process.returncode}): {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.whip_base}/healthcheck", timeout=1):
                    pass
                if "Janus OK" in self.logs():  # the WHIP server is connected to Janus
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the local SFU did not come up in {timeout_s:.0f} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in (self.run_dir / "run.log",
                                                                       self.run_dir / "janus.log") if p.exists())

    @property
    def whip_base(self) -> str:
        return f"http://{self.sfu_ip}:{WHIP_PORT}/whip"

    @property
    def janus_ws(self) -> str:
        return f"ws://{self.sfu_ip}:{JANUS_WS_PORT}"

    def endpoint(self, name: str, token: str | None = None) -> str:
        """Create a WHIP endpoint publishing into the room (simple-whip-server's own API); its URL."""
        body = json.dumps({"id": name, "room": ROOM, **({"token": token} if token else {})}).encode()
        request = urllib.request.Request(f"{self.whip_base}/create", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5):
            pass
        return f"{self.whip_base}/endpoint/{name}"

    def endpoints(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.whip_base}/endpoints", timeout=5) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # run.sh and the servers it started: a session of their own
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        if self.log is not None:
            self.log.close()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)  # takes the veth pair with it

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
