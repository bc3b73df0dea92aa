"""A regular (non-editable) install serves the page: the wheel carries client/web as package data.

Built from a copy of the source (a build writes build/ and *.egg-info next to its sources), installed
with --no-deps into a fresh venv that sees the system's packages (torch and the rest come from there),
and `avatar serve` run from an empty directory, far from any source tree.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
PAGE = {"/": "text/html", "/app.js": "text/javascript", "/style.css": "text/css"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read()


def test_an_installed_wheel_serves_the_page(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for package in ("engine", "client", "export", "train", "benchmarks"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    run = lambda *args, **kw: subprocess.run(args, check=True, capture_output=True, text=True, env=env, **kw)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
        str(source), timeout=120)
    wheel, = (tmp_path / "dist").glob("avatar_engine-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    # the system's pip, run by the venv's python, installs into the venv (over any editable install outside it)
    run(str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel), timeout=120)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(str(python), "-c", "import client, engine; print(engine.__file__); print(client.__file__)", cwd=work)
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout  # not the source tree

    port = _free_port()
    server = subprocess.Popen([str(venv / "bin" / "avatar"), "serve", "--port", str(port), "--size", "128",
                               "--driver", "baseline", "--max-sessions", "1"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in server.stdout:  # the banner comes once the port listens
            if "open http" in line or time.monotonic() > deadline:
                break
        assert server.poll() is None, server.stderr.read()
        for path, kind in PAGE.items():
            status, content_type, body = _get(f"http://127.0.0.1:{port}{path}")
            assert status == 200 and content_type == f"{kind}; charset=utf-8", (path, status, content_type)
            assert body == (ROOT / "client" / "web" / ("index.html" if path == "/" else path[1:])).read_bytes()
    finally:
        server.terminate()
        server.wait(15)
