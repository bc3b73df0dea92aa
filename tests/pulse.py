"""A private PulseAudio server with a virtual microphone, so capture code runs against a real sound server.

    with PulseServer(tmp_dir) as feeder:
        feeder.feed(samples, rate=16000)  # heard by sounddevice's default input, paced in real time

The server runs in the foreground (pulseaudio --daemonize=no, as root in user mode) with its runtime dir and
HOME under `root`, and loads only three modules: a native socket with anonymous auth, a null sink and
module-pipe-source reading s16le mono from a FIFO, made the default source.

How PortAudio reaches it: PortAudio only knows ALSA here; ALSA's pulse plugin (libasound2-plugins) defines the
`pulse` device, and its hook (/etc/alsa/conf.d/99-pulse.conf) makes `default` go to PulseAudio when a server
answers. libpulse finds our server through PULSE_SERVER alone (no XDG_RUNTIME_DIR or cookie needed). PortAudio
probes devices once, in Pa_Initialize, which sounddevice calls at import: so PULSE_SERVER is set first and, if
sounddevice is already imported, PortAudio is re-initialized (sd._terminate(); sd._initialize(), sounddevice's
own private pair) to rescan; again after the server stops so later code doesn't see a dead `default`.
No PortAudio stream may be open across start() or stop().

The pipe source has no clock of its own: it delivers whatever reaches the FIFO, so the Feeder writes 20 ms
blocks on an absolute monotonic schedule and writes zeros when it has nothing queued (else the source starves
and the recording stream stalls instead of recording silence).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.audio.io import to_mono_16k
from engine.timebase import SAMPLE_RATE

SOURCE = "avatar_mic"  # the virtual microphone's PulseAudio name
RATE = SAMPLE_RATE  # the FIFO's sample rate (s16le mono)
BLOCK_SECONDS = Fraction(1, 50)  # the Feeder writes 20 ms at a time
BLOCK = int(RATE * BLOCK_SECONDS)
START_TIMEOUT_S = 15.0


def missing() -> str | None:
    """Why a PulseAudio capture test cannot run here, or None when it can."""
    tools = [t for t in ("pulseaudio", "pactl") if shutil.which(t) is None]
    if tools:
        return f"{' and '.join(tools)} not installed (Debian: apt-get install pulseaudio pulseaudio-utils)"
    if "sounddevice" in sys.modules:
        return None
    try:
        import sounddevice  # noqa: F401  (loads libportaudio)
    except OSError:
        return "libportaudio is not installed (Debian: apt-get install libportaudio2 libasound2-plugins)"
    except ImportError:
        return "the sounddevice package is not installed (pip install sounddevice)"
    return None


class Feeder:
    """Writes queued audio into the pipe source's FIFO in real time, from a background thread.

    The server drains the FIFO only while something records, and drops what piled up when recording
    starts: feed audio after the capture has started.
    """

    def __init__(self, fifo: Path):
        # The server holds the FIFO open for reading, so this does not block; writes must not either
        # (a stalled server would hang close()): 640-byte writes are atomic, so a full pipe is a whole drop.
        self._fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._queued = np.zeros(0, "<i2")
        self._lock = threading.Lock()
        self._drained = threading.Event()
        self._drained.set()
        self._stop = threading.Event()
        self.dropped = 0  # blocks the full pipe refused
        self.error: OSError | None = None  # why writing stopped early (the server went away)
        self._thread = threading.Thread(target=self._run, name="pulse-feeder", daemon=True)
        self._thread.start()

    def feed(self, samples: np.ndarray, rate: int = RATE) -> float:
        """Queue (n,) or (n, channels) float in [-1, 1] or int16 samples at `rate`; returns their duration in s."""
        pcm = np.clip(np.round(to_mono_16k(samples, rate) * 32768), -32768, 32767).astype("<i2")
        with self._lock:
            self._queued = np.concatenate([self._queued, pcm])
            self._drained.clear()
        return len(pcm) / RATE

    def wait(self, timeout: float) -> bool:
        """Block until everything fed has been written to the FIFO; False on timeout."""
        return self._drained.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)

    def _next_block(self) -> np.ndarray:
        with self._lock:
            block, self._queued = self._queued[:BLOCK], self._queued[BLOCK:]
            if not len(self._queued):
                self._drained.set()
        return np.pad(block, (0, BLOCK - len(block)))  # zeros when idle

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            block = self._next_block()
            try:
                os.write(self._fd, block.tobytes())
            except BlockingIOError:
                self.dropped += 1
            except OSError as e:
                self.error = e
                return
            n += 1
            self._stop.wait(max(0.0, start + float(n * BLOCK_SECONDS) - time.monotonic()))


class PulseServer:
    """Starts pulseaudio under `root`, points this process (and its children) at it; stop() undoes both."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.socket = self.root / "run" / "native"
        self.fifo = self.root / "mic.fifo"
        self.log = self.root / "pulseaudio.log"
        self.address = f"unix:{self.socket}"
        self.feeder: Feeder | None = None
        self._process: subprocess.Popen | None = None
        self._saved_env: str | None = None

    def start(self) -> Feeder:
        if len(str(self.socket)) > 100:  # sun_path holds 108 bytes
            raise RuntimeError(f"PulseAudio socket path {self.socket} is too long for a unix socket; "
                               "use a shorter root")
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        script = self.root / "server.pa"
        script.write_text(
            ".fail\n"  # any failing line stops the server, so a half-configured one never answers
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            "load-module module-null-sink sink_name=avatar_null\n"
            f"load-module module-pipe-source file={self.fifo} format=s16le rate={RATE} channels=1 "
            f"source_name={SOURCE}\n"
            f"set-default-source {SOURCE}\n"
        )
        env = {**os.environ, "HOME": str(self.root / "home"), "XDG_RUNTIME_DIR": str(self.root / "run"),
               "XDG_CONFIG_HOME": str(self.root / "home" / ".config")}
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                ["pulseaudio", "-n", "--daemonize=no", "--system=false", "--exit-idle-time=-1",
                 "--use-pid-file=false", "--disable-shm=true", "--log-target=stderr", "-F", str(script)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
            self._saved_env = os.environ.get("PULSE_SERVER")
            os.environ["PULSE_SERVER"] = self.address
            _rescan_portaudio()
            self.feeder = Feeder(self.fifo)
        except BaseException:
            self.stop()
            raise
        return self.feeder

    def stop(self) -> None:
        """Stop feeding, kill the server and wait for it, restore PULSE_SERVER; safe to call more than once."""
        if self.feeder is not None:
            self.feeder.close()
            self.feeder = None
        if os.environ.get("PULSE_SERVER") == self.address:
            if self._saved_env is None:
                del os.environ["PULSE_SERVER"]
            else:
                os.environ["PULSE_SERVER"] = self._saved_env
            _rescan_portaudio()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Feeder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        env = {**os.environ, "PULSE_SERVER": self.address}
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with status {self._process.returncode}:\n{self._log_tail()}")
            try:
                info = subprocess.run(["pactl", "info"], env=env, capture_output=True, text=True, timeout=5)
            except subprocess.TimeoutExpired:
                continue
            if info.returncode == 0 and f"Default Source: {SOURCE}" in info.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"pulseaudio did not answer within {START_TIMEOUT_S:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def _rescan_portaudio() -> None:
    """Make PortAudio enumerate devices again (it does so only in Pa_Initialize). Skipped when sounddevice
    has not been imported: its import will initialize PortAudio with the environment as it is then."""
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        sd._terminate()
        sd._initialize()


def _die_with_parent() -> None:
    """In the child before exec: have the kernel send SIGTERM if the test process dies (no leaked servers)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
