"""What the suite and bench/ share: the run's constants, the engine probe and the nginx runner.

test_mcp_docker.py imports these back, and bench/bench.py (its nginx stage) imports this module, never the
test file; the fuzz rig is fuzzrig.py (shared with bench/fuzz.py). Nothing here is a test or a fixture.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

PREFIX = f"mcpt{secrets.token_hex(3)}"

REQUIRE_ENGINE = os.environ.get("MCP_DOCKER_REQUIRE_ENGINE") == "1"

# The engine the integration tests drive (the server gets it as DOCKER_HOST); default: docker-py's default.
TEST_HOST = os.environ.get("MCP_DOCKER_TEST_HOST", "")


def engine_client(url: str | None = None):
    import docker

    url = url or TEST_HOST
    return docker.APIClient(version="auto", timeout=30, **({"base_url": url} if url else {}))


def engine_available() -> bool:
    try:
        engine_client().ping()
        return True
    except Exception:
        return False


MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}


def make_keys(tmp_path: Path, *specs: list[str]) -> tuple[str, list[str]]:
    """Keys made with the real `genkey` command: returns the keys file and each key, in order."""
    keys_file = str(tmp_path / "keys.json")
    made = []
    for spec in specs:
        done = subprocess.run([sys.executable, str(HERE / "mcp_docker.py"), "genkey", "--keys-file", keys_file,
                               *spec], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.strip())
    return keys_file, made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_program(name: str) -> str:
    import shutil

    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        if REQUIRE_ENGINE:
            pytest.fail(f"{name} is not installed (.ci/engine-setup.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def readme_config(name: str) -> str:
    text = (HERE / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- tested: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"README.md has no code block marked 'tested: {name}'"
    return match.group(1)


def replace_exactly(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, f"{old!r} is in the README's file {text.count(old)} times, not {count}"
    return text.replace(old, new)


def nginx_site(replica_ports: list[int], listen_port: int, tls_dir: Path, upstream_cert: str | None = None) -> str:
    """The README's nginx site file for these ports; with ``upstream_cert``, re-encrypting to the replicas."""
    site = readme_config("nginx-site")
    site = replace_exactly(site, "listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;")
    site = replace_exactly(site, "    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n",
                           "".join(f"    server 127.0.0.1:{port};\n" for port in replica_ports))
    site = replace_exactly(site, "/etc/mcp-docker/tls/", f"{tls_dir}/", count=2)
    if upstream_cert:
        site = replace_exactly(site, "proxy_pass http://mcp_docker", "proxy_pass https://mcp_docker", count=5)
        extra = replace_exactly(readme_config("nginx-upstream-tls"), "/etc/mcp-docker/tls/upstream.crt", upstream_cert)
        site = replace_exactly(site, "    ssl_protocols TLSv1.2 TLSv1.3;\n", "    ssl_protocols TLSv1.2 TLSv1.3;\n" + extra)
    return site


class Nginx:
    """Debian's nginx in the foreground with the README's site file: own pid file, logs and temp dirs."""

    def __init__(self, directory: Path, site: str, port: int):
        binary = require_program("nginx")
        self.directory, self.port = directory, port
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "site.conf").write_text(site)
        temp = "".join(f"    {kind}_temp_path {directory}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (directory / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\n{'user root;' if os.geteuid() == 0 else ''}\n"
            f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log info;\n"
            "events { worker_connections 512; }\n"
            f"http {{\n    access_log {directory}/access.log;\n{temp}    include {directory}/site.conf;\n}}\n")
        self.proc = subprocess.Popen([binary, "-p", str(directory), "-e", str(directory / "error.log"),
                                      "-c", str(directory / "nginx.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        while True:
            assert self.proc.poll() is None, f"nginx did not start: {self.proc.stderr.read().decode()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.time() < deadline, "nginx did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
