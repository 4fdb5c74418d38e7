#!/usr/bin/env python3
"""Benchmark mcp-docker over stdio and HTTPS against floors measured in the same run.

Run from anywhere (needs a running Docker/Podman engine and the local image
``mcp-docker-test/busybox:1``; nothing is pulled, the only network traffic is to the local
engine socket or whatever ``DOCKER_HOST`` names, and to 127.0.0.1)::

    python3 bench/bench.py [--runs 10] [--iterations 200] [--warmup 20] [--json PATH] [--no-sdk]
                           [--no-http] [--http-seconds 5] [--http-clients 1,16,64]
                           [--http-max-requests 200000] [--sessions 500]
                           [--only cold,genkey,memory,tools-list,stdio,https,nginx,logs,compose,copy,swarm]
                           [--require-targets] [--swarm-iterations 30]

It prints one table and the issue's targets, and writes the same as JSON (default ``bench/results.json``). Every
figure stands next to a *floor* -- the cost of the same work without mcp-docker -- measured in the
same run, and the ratio value/floor:

1. **Cold start** -- wall time from spawning ``python3 mcp_docker.py serve`` (stdin/stdout pipes)
   until the answer to a raw ``initialize`` request has been read, median of ``--runs``.
   Floor: spawning ``python3 -c "import mcp.server.lowlevel"`` until the import has finished
   (the child prints one line after the import; we stop the clock when that line is read), so
   that neither side pays for interpreter teardown. The literal command's wall time to exit
   (which does include teardown) and a bare ``python3 -c pass`` are reported as context.
   Value and floor runs are interleaved, after one discarded warm-up of each.

   **genkey** -- wall time of ``python3 mcp_docker.py genkey --client-id <fresh id>`` (a keys file
   of its own in the scratch directory), spawn to exit, median of ``--runs``. Floor: a bare
   ``python3 -c pass``; ``python3 -c "import click"`` (the CLI library) and ``python3 -c "import
   mcp_docker"`` (the module without any command) are reported as context. Every key printed is
   checked to be distinct and stored (its SHA-256) under its client id.

2. **stdio tool latency** -- median and p90 of ``tools/call`` for ``docker_list_containers`` (20
   running containers, filtered by their unique name prefix so the answer is exactly those 20) and
   for ``docker_version``, sent as raw newline-delimited JSON-RPC over the pipes of one long-lived
   server (after ``initialize`` + ``notifications/initialized``). The clock runs from writing the
   request line to reading the response line; parsing and checking the response happen after
   the clock stops. Floor: the same engine request made directly with docker-py
   (``docker.APIClient(version="auto").containers(filters={"name": [prefix]})`` and
   ``.version()``), which is what the server does internally. Unless ``--no-sdk`` is given, the
   same calls are also made through the SDK's ``mcp.Client`` (stdio, initialize handshake) to show
   what a real Python client adds. Raw, SDK and direct calls are interleaved per iteration (order
   rotating) after ``--warmup`` calls of each, so engine drift affects all of them alike.

3. **tools/list size** -- bytes of the raw ``tools/list`` response line from the stdio server, in
   total and per tool. Floor: the same response with every tool cut down to the two fields the
   protocol requires (``name`` and ``inputSchema``), so the ratio is what the optional metadata
   (title, description, annotations, ``outputSchema``) adds to every client's context.

4. **HTTPS** (skipped with ``--no-http``) -- ``mcp_docker.py serve --transport http`` on 127.0.0.1
   with a self-signed certificate (``gencert``), an API key (``genkey``), the audit log on, and
   rate limiting on with limits set so high that they never trigger; all of it in one temporary
   directory that is removed at the end. Clients speak raw HTTP/1.1 over keep-alive TLS
   connections (asyncio streams, no client library), one Streamable HTTP session each
   (``initialize``, ``notifications/initialized``, then POSTs with ``Mcp-Session-Id``).

   a. **Memory** -- VmRSS of a fresh server after start + one ``docker_version`` call, and again
      after ``--sessions`` further sessions have been initialized and kept open. Floors: a Python
      process that imported ``mcp.server.lowlevel`` and ``docker`` and made one
      ``APIClient.version()`` call; for the sessions, the same server idle.
   b. **Latency, one client** -- median and p99 of ``docker_list_containers`` (the 20),
      ``docker_version`` and ``docker_inspect_container`` (one of the 20) over one HTTPS session,
      interleaved with the same docker-py requests (floor) exactly like the stdio rows.
   c. **Throughput** -- for each count in ``--http-clients``: that many concurrent HTTPS sessions
      call ``docker_version`` back to back for ``--http-seconds`` (after a discarded warm-up of a
      fifth of that), at most ``--http-max-requests`` in all; requests per second, p50 and p99.
      Floor: as many threads, each with its own ``docker.APIClient``, calling ``.version()`` the
      same way. Server, benchmark-process and engine CPU are recorded for every cell.

4d. **Behind nginx** (``--only nginx``; needs Debian's nginx) -- the README's nginx site file, exactly as the
   deployment tests run it (TLS at nginx with the same certificate, plain HTTP on loopback to replicas
   started with ``--trusted-proxies 127.0.0.1/32``, each with its own audit chain). One client calls
   ``docker_version`` through nginx interleaved with the same call to an mcp-docker serving TLS itself
   (the floor: what the proxy costs). Then 16 clients for ``--http-seconds``: direct, through nginx to one
   replica, through nginx to two replicas with sessions (found by the README's 404 failover), and
   stateless 2026-07-28 clients to one and to two replicas.

5. **Memory for logs** -- a container that has written 50 MB of 100-byte lines and then a marker
   line (the engine's last log line is awaited, so its log holds it all); a fresh stdio server
   (``initialize`` and one ``docker_version`` call first, so the engine client exists) answers
   ``docker_container_logs`` with ``tail=1000``: RSS before, the peak RSS during the call (VmHWM
   after resetting it through ``/proc/PID/clear_refs``, or VmRSS sampled every 0.5 ms where that
   file is not writable) and RSS after; growth = peak - before. The answer must be the last 1000
   lines. Floor: a fresh Python that imported docker, made one ``version()`` call and then the same
   ``APIClient.logs(..., tail=1000)`` request, measured the same way.

6. **Swarm** -- on the engine's swarm when it is a manager; on an engine in no swarm, a single-node
   swarm made for the stage (``swarm init --advertise-addr 127.0.0.1``) and left again at its end, also
   on errors, Ctrl-C and SIGTERM (with the ``docker_gwbridge`` network init adds, when it was not there
   before); a worker, a swarm in another state and Podman are left alone (the stage says so and its
   targets are "not measured"): ``docker_create_service``
   (replicas 0) and ``docker_scale_service`` (1 <-> 2 tasks that can never be placed, so no container
   starts) over stdio raw JSON-RPC, ``--swarm-iterations`` each, interleaved with the same API calls
   made directly (``POST /services/create`` with the spec the server sends; inspect +
   ``POST /services/{id}/update``; on API 1.46+ one inspect more each, as the server checks that
   no-new-privileges was kept). Every service is named ``mcpbench-<random>-...`` and removed at
   the end.

After the table, **TARGETS** lists the issue's targets (each MET / NOT MET with its value and limit,
or "not measured" when its stage did not run). Sizes there are SI: 1 MB = 10**6 bytes, 1 kB = 1000
bytes (the table uses MB too). ``--only`` runs a subset of the stages (default: all);
``--no-http`` leaves out ``memory`` and ``https``.

The 20 containers are ``busybox sleep 3600`` with ``--network none``, named
``mcpbench-<random>-N`` and labelled ``mcpbench.run=<random>`` (the log container likewise, with a
random id of its own); they are force-removed in a
``finally`` block (also on errors, Ctrl-C and SIGTERM), and so are the servers and the temporary
directory. Every server this script starts gets the audit log and keys file in that directory and
rate limits too high to trigger, so nothing is written to ``~/.mcp-docker``. Every response is
checked (status 200, not an error, 20 containers with the prefix / a version string / the right
container), so a broken server cannot look fast; the audit log must hold a record of every HTTPS
tool call.

Percentiles: median is ``statistics.median``; p90/p99 are nearest-rank. Uses only the standard
library, ``docker`` and ``mcp``. Exit status 0 on success (also when targets are missed: the
benchmark measures, it does not judge), 1 on failure; with ``--require-targets``, 2 when a target
is NOT MET.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "mcp_docker.py"
# How servers are started: "installed" runs the module from its compiled bytecode, as an installed
# `mcp-docker` (pip and pipx compile at install) does; "file" runs `python3 mcp_docker.py`, which
# CPython compiles anew on every start (no bytecode cache for a script). Set by --server.
SERVER_FORMS = {"installed": [sys.executable, "-m", "mcp_docker"], "file": [sys.executable, str(SERVER)]}
server_argv = SERVER_FORMS["installed"]
IMAGE = "mcp-docker-test/busybox:1"
CONTAINERS = 20
PROTOCOL_VERSION = "2025-11-25"
INITIALIZE: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                         "clientInfo": {"name": "bench", "version": "0"}}}
IMPORT_FLOOR_CODE = "import sys, mcp.server.lowlevel; sys.stdout.write('ready\\n'); sys.stdout.flush()"
MEMORY_FLOOR_CODE = ("import sys, mcp.server.lowlevel, docker\n"
                     "from docker.utils import kwargs_from_env\n"
                     "docker.APIClient(version='auto', **kwargs_from_env()).version()\n"
                     "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()\n")
TIMEOUT = 30.0  # seconds any single step may take before the benchmark gives up
HTTP_CLIENT_ID = "bench"
# Rate limiting stays ON (its bookkeeping is part of every call) but can never refuse a call here.
UNREACHABLE_LIMITS = {"SECURITY_RATE_LIMIT_ENABLED": "true", "SECURITY_RATE_LIMIT_RPM": "1000000",
                      "SECURITY_RATE_LIMIT_BURST": "1000000", "SECURITY_RATE_LIMIT_CONCURRENT": "100000"}
SESSION_CONNECTIONS = 8  # connections the --sessions sessions are opened over
STAGES = ("cold", "genkey", "memory", "tools-list", "stdio", "https", "nginx", "logs", "compose", "copy",
          "swarm")  # in run order
HTTP_STAGES = ("memory", "https", "nginx")
LOG_BYTES = 50_000_000
LOG_LINE = "mcpbench log line " + "0" * 81  # 99 characters + newline: 500000 whole lines make 50 MB
LOG_END = "mcpbench-log-end"  # written after the 50 MB; the engine's last line once it holds them all
LOG_TAIL = 1000
LOG_FLOOR_CODE = ("import json, sys, docker\n"
                  "from docker.utils import kwargs_from_env\n"
                  "api = docker.APIClient(version='auto', **kwargs_from_env())\n"
                  "api.version()\n"
                  "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
                  "name = sys.stdin.readline().strip()\n"
                  f"raw = api.logs(name, stdout=True, stderr=True, timestamps=False, tail={LOG_TAIL}, since=None,\n"
                  "               stream=False, follow=False)\n"
                  "sys.stdout.write(json.dumps(raw.decode('utf-8', 'replace')) + '\\n'); sys.stdout.flush()\n"
                  "sys.stdin.read()\n")
GENKEY_CONTEXT = {"import_click": "import click", "import_mcp_docker": "import mcp_docker"}
# The issue's targets; SI units (1 MB = 10**6 bytes).
TARGET_COLD_RATIO = 1.15
TARGET_LATENCY_OVERHEAD_MS = 1.5
TARGET_THROUGHPUT_CLIENTS, TARGET_THROUGHPUT_RATIO = 16, 0.5
TARGET_RSS_IDLE_BYTES = 70e6
TARGET_SESSIONS, TARGET_RSS_SESSIONS_BYTES = 500, 200e6
TARGET_LOG_GROWTH_BYTES = 30e6
TARGET_TOOL_BYTES = 1000
TARGET_COMPOSE_RATIO = 1.3
TARGET_COPY_RATIO = 1.2
COPY_BYTES = 10 * 1024 * 1024
TARGET_SWARM_OVERHEAD_MS = 2.0


class BenchError(RuntimeError):
    """The benchmark could not measure something, or a response was wrong."""


# ---------------------------------------------------------------------------------------------
# Statistics and /proc
# ---------------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize_ns(samples_ns: list[int], keep_samples: bool = True) -> dict[str, Any]:
    """Nanosecond samples -> a summary in milliseconds (samples kept for later analysis)."""
    ms = [s / 1e6 for s in samples_ns]
    summary = {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
               "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms), "min_ms": min(ms),
               "max_ms": max(ms)}
    if keep_samples:
        summary["samples_ms"] = [round(v, 4) for v in ms]
    return summary


def status_kib(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS: resident now; VmHWM: the peak since start or reset)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    return status_kib(pid, "VmRSS")


class PeakMeter:
    """RSS of a process before, at its peak during, and after a window.

    The peak is VmHWM after resetting it (writing 5 to /proc/PID/clear_refs, which needs the right
    to write there: root or the same user); where that fails, VmRSS is sampled every 0.5 ms by a
    thread, which can miss a peak shorter than that.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[int] = []
        self.sampling = threading.Event()
        self.sampler: threading.Thread | None = None
        self.method = "VmHWM"

    def start(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError:
            self.method = "VmRSS sampled every 0.5 ms"
        self.before_kib = rss_kib(self.pid)
        if self.method != "VmHWM":
            self.sampling.set()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

    def _sample(self) -> None:
        while self.sampling.is_set():
            with contextlib.suppress(OSError, BenchError):
                self.samples.append(rss_kib(self.pid))
            time.sleep(0.0005)

    def stop(self) -> dict[str, Any]:
        if self.sampler is not None:
            self.sampling.clear()
            self.sampler.join()
            peak_kib = max([self.before_kib, *self.samples])
        else:
            peak_kib = status_kib(self.pid, "VmHWM")
        after_kib = rss_kib(self.pid)
        peak_kib = max(peak_kib, after_kib)
        return {"before_bytes": self.before_kib * 1024, "peak_bytes": peak_kib * 1024, "after_bytes": after_kib * 1024,
                "growth_bytes": (peak_kib - self.before_kib) * 1024, "method": self.method}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (None when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def engine_pid() -> int | None:
    """The local dockerd's pid, when it is readable (only for CPU context)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/var/run/docker.pid").read_text().strip())
    return None


# ---------------------------------------------------------------------------------------------
# A scratch directory for everything a server writes: audit log, keys file, certificate, logs
# ---------------------------------------------------------------------------------------------


class Scratch:
    """One temporary directory (not under HOME) for this run; removed on exit.

    ``env`` is what every server started here runs with: the caller's environment minus any
    mcp-docker settings, plus the audit log and keys file in this directory and unreachable limits.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mcpbench-"))
        self.audit_log = self.dir / "audit.log"
        self.keys_file = self.dir / "api_keys.json"
        self.tls_dir = self.dir / "tls"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SAFETY_", "SECURITY_", "MCP_"))}
        self.env = {**inherited, "SECURITY_AUDIT_LOG_ENABLED": "true", "SECURITY_AUDIT_LOG_FILE": str(self.audit_log),
                    "SECURITY_API_KEYS_FILE": str(self.keys_file), **UNREACHABLE_LIMITS}
        self.api_key = ""

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def make_credentials(self) -> None:
        """A self-signed certificate and one API key, made by mcp-docker's own commands."""
        for argv in (["gencert", "--out-dir", str(self.tls_dir)],
                     ["genkey", "--client-id", HTTP_CLIENT_ID, "--keys-file", str(self.keys_file)]):
            done = subprocess.run([*server_argv, *argv], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            if done.returncode != 0:
                raise BenchError(f"`mcp_docker.py {argv[0]}` failed: {done.stderr.strip()[-500:]}")
            if argv[0] == "genkey":
                self.api_key = (done.stdout.strip().splitlines() or [""])[0].strip()
        if not self.api_key or not (self.tls_dir / "server.crt").is_file():
            raise BenchError("genkey/gencert produced no key or certificate")

    def client_ssl_context(self) -> ssl.SSLContext:
        """Verifies the server against its own self-signed certificate (its SANs include 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.tls_dir / "server.crt"))


# ---------------------------------------------------------------------------------------------
# Newline-delimited JSON-RPC over a child's pipes
# ---------------------------------------------------------------------------------------------


class LineReader:
    """Reads newline-terminated lines from a pipe fd with a timeout (no hidden buffering)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(fd, selectors.EVENT_READ)

    def readline(self, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        # Chunks are gathered in a list and only each new chunk is searched: a 30 MB answer line (a file
        # copied out) costs linear time, not the quadratic cost of growing and rescanning one buffer.
        parts, newline = [self.buffer], self.buffer.find(b"\n")
        while newline < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                self.buffer = b"".join(parts)
                raise BenchError(f"no complete line from the child within {timeout:.0f}s")
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.buffer = b"".join(parts)
                raise BenchError("the child closed its stdout")
            parts.append(chunk)
            found = chunk.find(b"\n")
            if found >= 0:
                newline = sum(len(part) for part in parts[:-1]) + found
        data = b"".join(parts)
        line, self.buffer = data[:newline + 1], data[newline + 1:]
        return line

    def close(self) -> None:
        self.selector.close()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def stderr_tail(handle: Any, limit: int = 2000) -> str:
    with contextlib.suppress(Exception):
        handle.flush()
        handle.seek(0)
        return handle.read().decode(errors="replace")[-limit:]
    return ""


def server_is_single_file() -> bool:
    return server_argv == SERVER_FORMS["file"]


def spawn_server(stderr: Any, env: dict[str, str], argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*(argv or server_argv), "serve"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, bufsize=0, env=env)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Close stdin (the server exits on EOF); terminate, then kill, if it lingers."""
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(OSError):
        if proc.stdout:
            proc.stdout.close()


class RawMCPClient:
    """One long-lived ``mcp_docker.py serve`` driven with raw JSON-RPC lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server; closed in close()
        self.proc = spawn_server(self.stderr, env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin_fd = self.proc.stdin.fileno()
        self.reader = LineReader(self.proc.stdout.fileno())
        self.next_id = 1
        self.last_line_bytes = 0  # size of the last response line read, newline included

    def request(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Send one request; return (ns from write to the response line being read, response)."""
        request_id = self.next_id
        self.next_id += 1
        line = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        started = time.perf_counter_ns()
        write_all(self.stdin_fd, line)
        while True:
            raw = self.reader.readline()
            elapsed = time.perf_counter_ns() - started
            message = json.loads(raw)
            if message.get("id") == request_id:  # skip server notifications, if any
                if "error" in message:
                    raise BenchError(f"{method} failed: {message['error']}")
                self.last_line_bytes = len(raw)
                return elapsed, message["result"]

    def notify(self, method: str) -> None:
        write_all(self.stdin_fd, encode({"jsonrpc": "2.0", "method": method}))

    def initialize(self) -> dict[str, Any]:
        _, result = self.request("initialize", INITIALIZE["params"])
        self.notify("notifications/initialized")
        return result

    def call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.request("tools/call", {"name": name, "arguments": arguments})

    def close(self) -> None:
        self.reader.close()
        stop_process(self.proc)
        self.stderr.close()


# ---------------------------------------------------------------------------------------------
# 1. Cold start
# ---------------------------------------------------------------------------------------------


def cold_start_once(env: dict[str, str], argv: list[str] | None = None) -> int:
    """ns from spawning the server to reading its answer to ``initialize``."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter_ns()
        proc = spawn_server(stderr, env, argv)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            write_all(proc.stdin.fileno(), encode(INITIALIZE))  # the pipe holds it until read
            reader = LineReader(proc.stdout.fileno())
            try:
                raw = reader.readline()
                elapsed = time.perf_counter_ns() - started
            finally:
                reader.close()
            answer = json.loads(raw)
            if answer.get("id") != 1 or "result" not in answer:
                raise BenchError(f"unexpected initialize answer: {raw[:300]!r}")
            if answer["result"].get("protocolVersion") != PROTOCOL_VERSION:
                raise BenchError(f"server negotiated {answer['result'].get('protocolVersion')!r}")
            return elapsed
        except BenchError as error:
            raise BenchError(f"{error}; server stderr: {stderr_tail(stderr)}") from None
        finally:
            stop_process(proc)


@contextlib.contextmanager
def ready_python(code: str, what: str):  # -> Iterator[tuple[subprocess.Popen[bytes], LineReader, int]]
    """A Python running ``code`` once it has printed its ``ready`` line: the process, a reader of its
    stdout and the ns from spawning it to that line. Stopped on the way out."""
    started = time.perf_counter_ns()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout.fileno())
        try:
            line = reader.readline()
            elapsed = time.perf_counter_ns() - started
            if line != b"ready\n":
                raise BenchError(f"{what} printed {line!r}")
            yield proc, reader, elapsed
        finally:
            reader.close()
    finally:
        stop_process(proc)


def import_floor_once() -> int:
    """ns from spawning ``python3 -c 'import mcp.server.lowlevel'`` to the import being done."""
    with ready_python(IMPORT_FLOOR_CODE, "import floor") as (_, _, elapsed):
        return elapsed


def wall_time_of(argv: list[str]) -> int:
    """ns from spawning ``argv`` until it has exited (checked for success)."""
    started = time.perf_counter_ns()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=TIMEOUT)
    return time.perf_counter_ns() - started


def bench_cold_start(runs: int, env: dict[str, str]) -> dict[str, Any]:
    literal = [sys.executable, "-c", "import mcp.server.lowlevel"]
    bare = [sys.executable, "-c", "pass"]
    single_file = None if server_is_single_file() else SERVER_FORMS["file"]
    cold_start_once(env), import_floor_once(), wall_time_of(literal)  # warm the page cache and .pyc files
    value, floor, literal_ns, bare_ns, file_ns = [], [], [], [], []
    for _ in range(runs):
        value.append(cold_start_once(env))
        floor.append(import_floor_once())
        if single_file:
            file_ns.append(cold_start_once(env, single_file))
        literal_ns.append(wall_time_of(literal))
        bare_ns.append(wall_time_of(bare))
    return {"value": summarize_ns(value), "floor": summarize_ns(floor),
            "single_file": summarize_ns(file_ns) if file_ns else None,
            "context": {"import_mcp_lowlevel_to_exit": summarize_ns(literal_ns),
                        "bare_python_startup": summarize_ns(bare_ns)}}


def bench_genkey(runs: int, scratch: Scratch) -> dict[str, Any]:
    """``mcp_docker.py genkey`` spawn to exit (fresh client id each time) vs a bare interpreter."""
    keys_file = scratch.dir / "genkey_keys.json"  # its own file: the HTTPS server's keys stay one key
    env = {**scratch.env, "SECURITY_API_KEYS_FILE": str(keys_file)}
    run_id = uuid.uuid4().hex[:10]
    keys: dict[str, str] = {}

    def genkey_once() -> int:
        client_id = f"bench-genkey-{run_id}-{len(keys)}"
        started = time.perf_counter_ns()
        done = subprocess.run([*server_argv, "genkey", "--client-id", client_id], cwd=REPO, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
        elapsed = time.perf_counter_ns() - started
        if done.returncode != 0:
            raise BenchError(f"`mcp_docker.py genkey` failed: {done.stderr.strip()[-500:]}")
        keys[client_id] = (done.stdout.strip().splitlines() or [""])[0].strip()
        return elapsed

    bare = [sys.executable, "-c", "pass"]
    contexts = {name: [sys.executable, "-c", code] for name, code in GENKEY_CONTEXT.items()}

    def context_time(argv: list[str]) -> int:
        started = time.perf_counter_ns()
        subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=TIMEOUT)
        return time.perf_counter_ns() - started

    genkey_once(), wall_time_of(bare), *(context_time(argv) for argv in contexts.values())  # warm-up
    value, floor = [], []
    context_ns: dict[str, list[int]] = {name: [] for name in contexts}
    for _ in range(runs):
        value.append(genkey_once())
        floor.append(wall_time_of(bare))
        for name, argv in contexts.items():
            context_ns[name].append(context_time(argv))
    stored = json.loads(keys_file.read_text(encoding="utf-8"))
    text = json.dumps(stored)
    missing = [cid for cid, key in keys.items() if not key or cid not in text
               or hashlib.sha256(key.encode()).hexdigest() not in text]
    if missing or len(set(keys.values())) != len(keys):
        raise BenchError(f"genkey: {len(keys)} runs, keys not distinct or not stored for {missing[:3]}")
    return {"value": summarize_ns(value), "floor": summarize_ns(floor),
            "context": {name: summarize_ns(samples) for name, samples in context_ns.items()}}


# ---------------------------------------------------------------------------------------------
# Containers for the listing and inspect benchmarks
# ---------------------------------------------------------------------------------------------


class BenchContainers:
    """Creates N sleeping (or ``command``) containers; removes them (and anything with the run label) on exit."""

    def __init__(self, api: Any, count: int, command: list[str] | None = None):
        self.api = api
        self.count = count
        self.command = command or ["sleep", "3600"]
        self.run_id = uuid.uuid4().hex[:10]
        self.prefix = f"mcpbench-{self.run_id}-"
        self.label = f"mcpbench.run={self.run_id}"
        self.ids: list[str] = []

    def __enter__(self) -> BenchContainers:
        try:
            host_config = self.api.create_host_config(network_mode="none")
            for number in range(self.count):
                created = self.api.create_container(
                    IMAGE, command=self.command, name=f"{self.prefix}{number}", host_config=host_config,
                    labels={"mcpbench.run": self.run_id})
                self.ids.append(created["Id"])
                self.api.start(created["Id"])
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        # Ctrl-C during removal must not leave containers behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            ids = list(self.ids)
            with contextlib.suppress(Exception):  # also catch ones created but not yet recorded
                ids += [c["Id"] for c in self.api.containers(all=True, filters={"label": self.label})]
            failures = []
            for container_id in dict.fromkeys(ids):
                try:
                    self.api.remove_container(container_id, force=True)
                except Exception as exc:
                    if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                        failures.append(f"{container_id[:12]}: {exc}")
            self.ids.clear()
            if failures:
                print("warning: could not remove: " + "; ".join(failures), file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# Checks and the direct (floor) requests
# ---------------------------------------------------------------------------------------------


def check_list(structured: Any, prefix: str, where: str) -> None:
    rows = (structured or {}).get("containers") or []
    names = sorted(r.get("name", "") for r in rows)
    if len(rows) != CONTAINERS or not all(n.startswith(prefix) for n in names):
        raise BenchError(f"{where}: expected {CONTAINERS} containers named {prefix}*, got {names[:5]}...")


def check_version(structured: Any, where: str) -> None:
    if not (structured or {}).get("version") or not structured.get("api_version"):
        raise BenchError(f"{where}: no version in {str(structured)[:200]}")


def check_inspect(structured: Any, name: str, container_id: str, where: str) -> None:
    structured = structured or {}
    short = str(structured.get("id") or "")
    if structured.get("name") != name or not short or not container_id.startswith(short):
        raise BenchError(f"{where}: expected container {name} ({container_id[:12]}), got "
                         f"{structured.get('name')!r} ({structured.get('id')!r})")


def check_tool_result(result: dict[str, Any], where: str) -> dict[str, Any]:
    if result.get("isError"):
        raise BenchError(f"{where}: tool error {result.get('structuredContent') or result.get('content')}")
    return result.get("structuredContent") or {}


class ToolCase:
    """One tool, its arguments, its checker, and the docker-py request it makes (the floor)."""

    def __init__(self, tool: str, arguments: dict[str, Any], check: Callable[[Any, str], None],
                 direct: Callable[[Any], Any], direct_view: Callable[[Any], Any]):
        self.tool, self.arguments, self.check = tool, arguments, check
        self.direct, self.direct_view = direct, direct_view

    def direct_step(self, api: Any) -> Callable[[], int]:
        """A step that times the floor request on ``api`` and checks its answer after the clock stops."""
        def step() -> int:
            started = time.perf_counter_ns()
            answer = self.direct(api)
            elapsed = time.perf_counter_ns() - started
            self.check(self.direct_view(answer), f"docker-py for {self.tool}")
            return elapsed
        return step


def tool_cases(prefix: str, inspect_name: str, inspect_id: str) -> dict[str, ToolCase]:
    return {
        "docker_list_containers": ToolCase(
            "docker_list_containers", {"name": prefix},
            lambda s, where: check_list(s, prefix, where),
            lambda api: api.containers(all=False, filters={"name": [prefix]}),  # what the tool sends
            lambda rows: {"containers": [{"name": (r.get("Names") or [""])[0].lstrip("/")} for r in rows]}),
        "docker_version": ToolCase(
            "docker_version", {}, check_version, lambda api: api.version(),
            lambda v: {"version": v.get("Version"), "api_version": v.get("ApiVersion")}),
        "docker_inspect_container": ToolCase(
            "docker_inspect_container", {"container": inspect_name},
            lambda s, where: check_inspect(s, inspect_name, inspect_id, where),
            lambda api: api.inspect_container(inspect_name),
            lambda info: {"name": str(info.get("Name", "")).lstrip("/"), "id": str(info.get("Id", ""))[:12]}),
    }


# ---------------------------------------------------------------------------------------------
# 2. stdio tool latency (raw JSON-RPC, the SDK client, docker-py directly) and tools/list size
# ---------------------------------------------------------------------------------------------


class SDKClient:
    """The same calls through ``mcp.Client`` over stdio (handshake era), its own server process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __aexit__
        self.client: Any = None
        self.env = env

    async def __aenter__(self) -> SDKClient:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=server_argv[0], args=[*server_argv[1:], "serve"], cwd=str(REPO),
                                       env=dict(self.env))
        transport = stdio_client(params, errlog=self.stderr)  # type: ignore[arg-type]
        self.client = await self.stack.enter_async_context(Client(transport, mode="legacy", cache=None))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.stack.aclose()
        finally:
            self.stderr.close()

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[int, Any]:
        started = time.perf_counter_ns()
        result = await self.client.call_tool(name, arguments)
        elapsed = time.perf_counter_ns() - started
        if result.is_error:
            raise BenchError(f"SDK {name}: tool error {result.structured_content}")
        return elapsed, result.structured_content


async def run_interleaved(steps: dict[str, Callable[[], Any]], warmup: int, iterations: int) -> dict[str, list[int]]:
    """Call every step ``warmup`` times (discarded), then ``iterations`` times with rotating order.

    A step returns its own elapsed ns (or an awaitable of it), so each one times exactly its call.
    """
    names = list(steps)
    samples: dict[str, list[int]] = {name: [] for name in names}
    for index in range(warmup + iterations):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = steps[name]()
            if inspect.isawaitable(elapsed):
                elapsed = await elapsed
            if index >= warmup:
                samples[name].append(elapsed)
    return samples


def tools_list_size(raw: RawMCPClient) -> dict[str, Any]:
    """The tools/list answer's wire size, and the same answer with only the required tool fields."""
    _, result = raw.request("tools/list", {})
    wire = raw.last_line_bytes
    tools = result.get("tools") or []
    if not tools or result.get("nextCursor"):
        raise BenchError(f"tools/list: expected one page of tools, got {len(tools)} (cursor {result.get('nextCursor')!r})")
    minimal = encode({"jsonrpc": "2.0", "id": 0,
                      "result": {"tools": [{"name": t["name"], "inputSchema": t["inputSchema"]} for t in tools]}})
    per_tool = {t["name"]: len(json.dumps(t, separators=(",", ":")).encode()) for t in tools}
    return {"tools": len(tools), "wire_bytes": wire, "floor_bytes": len(minimal),
            "per_tool_bytes": wire / len(tools), "floor_per_tool_bytes": len(minimal) / len(tools),
            "largest_tools": dict(sorted(per_tool.items(), key=lambda item: -item[1])[:5])}


def bench_tools_list(env: dict[str, str]) -> dict[str, Any]:
    raw = RawMCPClient(env)
    try:
        raw.initialize()
        return tools_list_size(raw)
    except BenchError as error:
        raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
    finally:
        raw.close()


async def bench_latency(api: Any, cases: dict[str, ToolCase], warmup: int, iterations: int, use_sdk: bool,
                        env: dict[str, str]) -> dict[str, Any]:
    def raw_step(case: ToolCase) -> Callable[[], int]:
        def step() -> int:
            elapsed, result = raw.call_tool(case.tool, case.arguments)
            case.check(check_tool_result(result, f"raw {case.tool}"), f"raw {case.tool}")
            return elapsed
        return step

    def sdk_step(case: ToolCase) -> Callable[[], Any]:
        async def step() -> int:
            elapsed, structured = await sdk.call_tool(case.tool, case.arguments)
            case.check(structured, f"SDK {case.tool}")
            return elapsed
        return step

    raw = RawMCPClient(env)
    results: dict[str, Any] = {}
    try:
        try:
            raw.initialize()
        except BenchError as error:
            raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
        async with contextlib.AsyncExitStack() as stack:
            sdk: Any = await stack.enter_async_context(SDKClient(env)) if use_sdk else None
            for tool in ("docker_list_containers", "docker_version"):
                case = cases[tool]
                steps: dict[str, Callable[[], Any]] = {"raw": raw_step(case), "direct": case.direct_step(api)}
                if use_sdk:
                    steps["sdk"] = sdk_step(case)
                samples = await run_interleaved(steps, warmup, iterations)
                results[tool] = {name: summarize_ns(values) for name, values in samples.items()}
    finally:
        raw.close()
    return results


# ---------------------------------------------------------------------------------------------
# 3. HTTPS: the server process and a raw HTTP/1.1 client
# ---------------------------------------------------------------------------------------------

LISTENING = re.compile(rb"mcp-docker listening on https?://127\.0\.0\.1:(\d+)/mcp")


class HttpServerProcess:
    """``mcp_docker.py serve --transport http`` on 127.0.0.1, any free port, TLS, output to a log file."""

    def __init__(self, scratch: Scratch, name: str, tls: bool = True, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.log_path = scratch.dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        started = time.perf_counter()
        tls_args = ["--tls-cert", str(scratch.tls_dir / "server.crt"), "--tls-key", str(scratch.tls_dir / "server.key")]
        self.proc = subprocess.Popen(
            [*server_argv, "serve", "--transport", "http", "--host", "127.0.0.1", "--port", "0",
             *(tls_args if tls else []), *extra],
            cwd=REPO, env={**scratch.env, **(env or {})}, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        try:
            self.port = self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        self.start_ms = (time.perf_counter() - started) * 1000

    def _wait_until_listening(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = LISTENING.search(self.log_path.read_bytes())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise BenchError(f"the HTTP server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the HTTP server did not listen within {TIMEOUT:.0f}s: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes().decode(errors="replace")[-limit:]
        return ""

    def log_problems(self) -> list[str]:
        """Distinct WARNING/ERROR lines of the server log (timestamps cut), with counts."""
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if " WARNING " in line or " ERROR " in line:
                    text = line.split(" ", 2)[-1][:200]
                    counts[text] = counts.get(text, 0) + 1
        return [f"{count}x {text}" for text, count in counts.items()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the server's graceful shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BenchError(f"bad HTTP status line {lines[0][:100]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


class HttpsConnection:
    """One keep-alive TLS connection speaking raw HTTP/1.1 to /mcp: no client library, so the client
    stays cheap next to the server (asyncio streams; one event loop drives many of these)."""

    def __init__(self, port: int, api_key: str, context: ssl.SSLContext):
        self.port, self.context = port, context
        self.fixed = (f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
                      "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpsConnection:
        async with asyncio.timeout(TIMEOUT):
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.context, server_hostname="127.0.0.1")
        return self

    async def request(self, method: bytes, body: bytes = b"", headers: bytes = b"") -> tuple[int, int, dict[str, str], bytes]:
        """One exchange: (ns from writing the request to having read the whole response, status, headers, body)."""
        assert self.reader is not None and self.writer is not None
        data = b"%s /mcp HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (method, self.fixed, headers, len(body), body)
        started = time.perf_counter_ns()
        try:
            async with asyncio.timeout(TIMEOUT):
                self.writer.write(data)
                await self.writer.drain()
                status, fields = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
                length = fields.get("content-length")
                if length is None or not length.isdigit():  # an SSE stream: not expected for these calls
                    raise BenchError(f"HTTP {status} answer without Content-Length ({fields.get('content-type')})")
                payload = await self.reader.readexactly(int(length))
        except TimeoutError:
            raise BenchError(f"no complete HTTPS answer within {TIMEOUT:.0f}s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise BenchError(f"the HTTPS connection broke: {type(exc).__name__}") from None
        return time.perf_counter_ns() - started, status, fields, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.writer.wait_closed()


class HttpsSession:
    """One Streamable HTTP session on a connection (several sessions may share one connection)."""

    calls_made = 0  # tools/call requests sent over HTTPS in this run, for the audit check

    def __init__(self, connection: HttpsConnection):
        self.connection = connection
        self.id = ""
        self.headers = b""
        self.next_id = 1

    def body(self, method: str, params: dict[str, Any] | None) -> bytes:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.next_id += 1
        return json.dumps(message, separators=(",", ":")).encode()

    async def initialize(self) -> HttpsSession:
        _, status, fields, payload = await self.connection.request(b"POST", self.body("initialize", INITIALIZE["params"]))
        answer = json.loads(payload) if status == 200 else {}
        self.id = fields.get("mcp-session-id", "")
        if status != 200 or not self.id or answer.get("result", {}).get("protocolVersion") != PROTOCOL_VERSION:
            raise BenchError(f"HTTPS initialize: HTTP {status}, session {self.id!r}, {payload[:300]!r}")
        self.headers = f"Mcp-Session-Id: {self.id}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n".encode()
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
        _, status, _, payload = await self.connection.request(b"POST", note, self.headers)
        if status != 202:
            raise BenchError(f"HTTPS notifications/initialized: HTTP {status}, {payload[:300]!r}")
        return self

    async def send(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, int, bytes]:
        """(elapsed ns, status, body) of one request on this session; checked later by the caller."""
        if method == "tools/call":
            HttpsSession.calls_made += 1
        elapsed, status, _, payload = await self.connection.request(b"POST", self.body(method, params), self.headers)
        return elapsed, status, payload

    async def delete(self) -> None:
        _, status, _, payload = await self.connection.request(b"DELETE", b"", self.headers)
        if status != 200:
            raise BenchError(f"HTTPS DELETE session: HTTP {status}, {payload[:200]!r}")


class StatelessSession(HttpsSession):
    """A 2026-07-28 client on a connection: no session, every request stands alone (for docker_version calls)."""

    async def initialize(self) -> HttpsSession:
        self.headers = b"MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: docker_version\r\n"
        return self

    def body(self, method: str, params: dict[str, Any] | None) -> bytes:
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
        return super().body(method, {**(params or {}), "_meta": meta})

    async def delete(self) -> None:
        return None


def http_result(status: int, payload: bytes, where: str) -> dict[str, Any]:
    """The structuredContent of a 200 tools/call answer, else BenchError."""
    if status != 200:
        raise BenchError(f"{where}: HTTP {status}: {payload[:300]!r}")
    answer = json.loads(payload)
    if "result" not in answer:
        raise BenchError(f"{where}: {str(answer.get('error') or answer)[:300]}")
    return check_tool_result(answer["result"], where)


async def open_sessions(server: HttpServerProcess, scratch: Scratch, count: int,
                        kind: type[HttpsSession] = HttpsSession) -> list[HttpsSession]:
    context = scratch.client_ssl_context()
    connections = await asyncio.gather(*(HttpsConnection(server.port, scratch.api_key, context).open()
                                         for _ in range(count)))
    return list(await asyncio.gather(*(kind(c).initialize() for c in connections)))


async def close_sessions(sessions: list[HttpsSession]) -> None:
    await asyncio.gather(*(s.delete() for s in sessions))
    await asyncio.gather(*(c.close() for c in dict.fromkeys(s.connection for s in sessions)))


# ---------------------------------------------------------------------------------------------
# 3a. HTTPS memory
# ---------------------------------------------------------------------------------------------


def memory_floor_kib() -> int:
    """RSS of a Python that imported mcp.server.lowlevel and docker and made one version() call."""
    with ready_python(MEMORY_FLOOR_CODE, "memory floor") as (proc, _, _):
        return rss_kib(proc.pid)


async def bench_memory(scratch: Scratch, session_count: int) -> dict[str, Any]:
    floor_kib = memory_floor_kib()
    server = HttpServerProcess(scratch, "http-memory")
    try:
        (first,) = await open_sessions(server, scratch, 1)
        _, status, payload = await first.send("tools/call", {"name": "docker_version", "arguments": {}})
        check_version(http_result(status, payload, "HTTPS docker_version"), "HTTPS docker_version")
        await asyncio.sleep(0.2)
        idle_kib = rss_kib(server.proc.pid)
        connections = [await HttpsConnection(server.port, scratch.api_key, scratch.client_ssl_context()).open()
                       for _ in range(SESSION_CONNECTIONS)]

        async def open_many(connection: HttpsConnection, how_many: int) -> list[HttpsSession]:
            return [await HttpsSession(connection).initialize() for _ in range(how_many)]

        shares = [session_count // SESSION_CONNECTIONS + (i < session_count % SESSION_CONNECTIONS)
                  for i in range(SESSION_CONNECTIONS)]
        opened_at = time.perf_counter()
        batches = await asyncio.gather(*(open_many(c, n) for c, n in zip(connections, shares, strict=True)))
        open_seconds = time.perf_counter() - opened_at
        sessions = [s for batch in batches for s in batch]
        if len({s.id for s in sessions}) != session_count:
            raise BenchError(f"expected {session_count} distinct sessions, got {len({s.id for s in sessions})}")
        for session in (sessions[0], sessions[-1], first):  # still open and answering
            _, status, payload = await session.send("ping", None)
            if status != 200 or "result" not in json.loads(payload):
                raise BenchError(f"ping on an open session: HTTP {status}, {payload[:200]!r}")
        await asyncio.sleep(0.2)
        loaded_kib = rss_kib(server.proc.pid)
        for connection in [*connections, first.connection]:
            await connection.close()
    finally:
        server.stop()
    return {"floor_kib": floor_kib, "idle_kib": idle_kib, "sessions": session_count, "loaded_kib": loaded_kib,
            "per_session_kib": (loaded_kib - idle_kib) / session_count,
            "sessions_opened_per_second": session_count / open_seconds, "server_start_ms": server.start_ms,
            "server_log_problems": server.log_problems()}


# ---------------------------------------------------------------------------------------------
# 3b. HTTPS latency with one client
# ---------------------------------------------------------------------------------------------


async def bench_https_latency(server: HttpServerProcess, scratch: Scratch, api: Any, cases: dict[str, ToolCase],
                              warmup: int, iterations: int) -> dict[str, Any]:
    def https_step(case: ToolCase) -> Callable[[], Any]:
        async def step() -> int:
            elapsed, status, payload = await session.send("tools/call", {"name": case.tool,
                                                                         "arguments": case.arguments})
            case.check(http_result(status, payload, f"HTTPS {case.tool}"), f"HTTPS {case.tool}")
            return elapsed
        return step

    (session,) = await open_sessions(server, scratch, 1)
    results: dict[str, Any] = {}
    try:
        for tool, case in cases.items():
            samples = await run_interleaved({"https": https_step(case), "direct": case.direct_step(api)},
                                            warmup, iterations)
            results[tool] = {name: summarize_ns(values) for name, values in samples.items()}
    finally:
        await close_sessions([session])
    return results


# ---------------------------------------------------------------------------------------------
# 3c. HTTPS throughput with N clients, against N docker-py threads
# ---------------------------------------------------------------------------------------------


class CpuMeter:
    """CPU used by the server, this process and the engine between start() and stop(), as % of one core."""

    def __init__(self, server_pid: int | None):
        self.pids = {"server": server_pid, "engine": engine_pid()}

    def _read(self) -> dict[str, float | None]:
        readings: dict[str, float | None] = {name: cpu_seconds(pid) if pid else None for name, pid in self.pids.items()}
        readings["bench_client"] = time.process_time()
        return readings

    def start(self) -> None:
        self.before, self.started = self._read(), time.perf_counter()

    def stop(self) -> dict[str, float | None]:
        after, wall = self._read(), time.perf_counter() - self.started
        return {f"{name}_cpu_pct": None if after[name] is None or self.before[name] is None
                else round(100 * (after[name] - self.before[name]) / wall, 1)  # type: ignore[operator]
                for name in after}


def throughput_summary(latencies: list[list[int]], wall: float, cpu: dict[str, Any]) -> dict[str, Any]:
    flat = [value for per_client in latencies for value in per_client]
    if not flat:
        raise BenchError("no request completed in a throughput cell")
    summary = summarize_ns(flat, keep_samples=False)
    return {"requests": len(flat), "seconds": wall, "rps": len(flat) / wall, "p50_ms": summary["median_ms"],
            "p99_ms": summary["p99_ms"], "latency": summary, "per_client_requests": [len(x) for x in latencies],
            **cpu}


async def https_cell(server: HttpServerProcess, scratch: Scratch, clients: int, warmup_s: float, seconds: float,
                     max_requests: int, kind: type[HttpsSession] = HttpsSession) -> dict[str, Any]:
    """``clients`` sessions calling docker_version back to back; answers are checked after the clock stops."""
    sessions = await open_sessions(server, scratch, clients, kind)
    params = {"name": "docker_version", "arguments": {}}
    per_client = max(1, max_requests // clients)

    async def loop(session: HttpsSession, until: float, limit: int) -> tuple[list[int], list[tuple[int, bytes]]]:
        samples: list[int] = []
        answers: list[tuple[int, bytes]] = []
        while len(samples) < limit and time.perf_counter() < until:
            elapsed, status, payload = await session.send("tools/call", params)
            samples.append(elapsed)
            answers.append((status, payload))
        return samples, answers

    def verify(runs: list[tuple[list[int], list[tuple[int, bytes]]]]) -> None:
        for _, answers in runs:
            for status, payload in answers:
                check_version(http_result(status, payload, "HTTPS docker_version"), "HTTPS docker_version")

    try:
        warm_until = time.perf_counter() + warmup_s
        verify(await asyncio.gather(*(loop(s, warm_until, per_client) for s in sessions)))
        meter = CpuMeter(server.proc.pid)
        meter.start()
        started = time.perf_counter()
        runs = await asyncio.gather(*(loop(s, started + seconds, per_client) for s in sessions))
        wall = time.perf_counter() - started
        cpu = meter.stop()
        verify(runs)
    finally:
        await close_sessions(sessions)
    return throughput_summary([samples for samples, _ in runs], wall, cpu)


def direct_cell(clients: int, warmup_s: float, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` threads, each with its own docker.APIClient, calling version() back to back."""
    import docker
    from docker.utils import kwargs_from_env

    apis = [docker.APIClient(version="auto", timeout=TIMEOUT, **kwargs_from_env()) for _ in range(clients)]
    per_client = max(1, max_requests // clients)
    window: dict[str, float] = {}
    meter = CpuMeter(None)

    def open_window() -> None:  # runs once, in one thread, after all have arrived and before any goes on
        meter.start()
        window["start"] = time.perf_counter()
        window["until"] = window["start"] + seconds

    warm_barrier = threading.Barrier(clients, timeout=TIMEOUT)
    measure_barrier = threading.Barrier(clients, action=open_window, timeout=TIMEOUT)
    samples: list[list[int]] = [[] for _ in range(clients)]
    answers: list[list[Any]] = [[] for _ in range(clients)]
    finished: list[float] = [0.0] * clients
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        api = apis[index]
        try:
            warm_barrier.wait()
            warm_until, done = time.perf_counter() + warmup_s, 0
            while done < per_client and time.perf_counter() < warm_until:
                answers[index].append(api.version())
                done += 1
            measure_barrier.wait()
            mine, until = samples[index], window["until"]
            while len(mine) < per_client and time.perf_counter() < until:
                started = time.perf_counter_ns()
                answer = api.version()
                mine.append(time.perf_counter_ns() - started)
                answers[index].append(answer)
            finished[index] = time.perf_counter()
        except BaseException as exc:  # surfaced below; a broken barrier releases the others
            errors.append(exc)
            warm_barrier.abort()
            measure_barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=warmup_s + seconds + 2 * TIMEOUT)
    for api in apis:
        api.close()
    if errors or any(thread.is_alive() for thread in threads):
        raise BenchError(f"docker-py throughput floor failed: {errors[0] if errors else 'a thread hung'}")
    cpu = meter.stop()
    for per_thread in answers:
        for answer in per_thread:
            check_version({"version": answer.get("Version"), "api_version": answer.get("ApiVersion")},
                          "docker-py version()")
    cpu.pop("server_cpu_pct", None)
    return throughput_summary(samples, max(finished) - window["start"], cpu)


async def bench_throughput(server: HttpServerProcess, scratch: Scratch, client_counts: list[int], seconds: float,
                           max_requests: int) -> dict[str, Any]:
    warmup_s = seconds / 5
    results: dict[str, Any] = {}
    for clients in client_counts:
        print(f"      {clients} client(s): HTTPS, then docker-py ...", file=sys.stderr)
        https = await https_cell(server, scratch, clients, warmup_s, seconds, max_requests)
        direct = await asyncio.to_thread(direct_cell, clients, warmup_s, seconds, max_requests)
        results[str(clients)] = {"https": https, "direct": direct}
    return results


def audit_tool_calls(path: Path) -> int:
    """tools/call records of the benchmark's API key in the audit log (rotated files included)."""
    found = 0
    for candidate in sorted(path.parent.glob(path.name + "*")):
        with open(candidate, "rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    found += record.get("event_type") == "tool_call" and record.get("client_id") == HTTP_CLIENT_ID
    return found


async def bench_https(scratch: Scratch, api: Any, cases: dict[str, ToolCase], args: argparse.Namespace,
                      stage: Callable[[str], None]) -> dict[str, Any]:
    server = HttpServerProcess(scratch, "http-load")
    try:
        stage(f"HTTPS latency, 1 client (auth, audit, rate limiting on): {args.warmup} warm-up + "
              f"{args.iterations} calls per tool")
        latency = await bench_https_latency(server, scratch, api, cases, args.warmup, args.iterations)
        stage(f"HTTPS throughput: {args.http_seconds:g} s per cell after {args.http_seconds / 5:g} s warm-up")
        throughput = await bench_throughput(server, scratch, args.http_clients, args.http_seconds,
                                            args.http_max_requests)
        rss_after_kib = rss_kib(server.proc.pid)
    finally:
        server.stop()
    return {"latency": latency, "throughput": throughput, "rss_after_load_kib": rss_after_kib,
            "server_start_ms": server.start_ms, "server_log_problems": server.log_problems()}


# ---------------------------------------------------------------------------------------------
# 4d. Behind nginx: the README's site file, against mcp-docker's own HTTPS; two replicas against one
# ---------------------------------------------------------------------------------------------


class ServerAt:
    """What the HTTPS cells need of a target: the port clients connect to, the process whose CPU counts."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]):
        self.port, self.proc = port, proc


async def bench_nginx(scratch: Scratch, args: argparse.Namespace, stage: Callable[[str], None]) -> dict[str, Any]:
    """docker_version through nginx (TLS there, plain HTTP on loopback to the replicas, the README's exact
    site file as the deployment tests run it) against the same call to mcp-docker serving TLS itself."""
    sys.path.insert(0, str(REPO))
    import testkit as deployment  # the README's nginx file and the nginx runner the tests use

    behind = ("--trusted-proxies", "127.0.0.1/32")
    servers = [HttpServerProcess(scratch, "nginx-direct")]
    nginxes: list[Any] = []
    try:
        for n in range(2):  # each replica its own audit chain, as the README says (counted by audit_tool_calls)
            servers.append(HttpServerProcess(scratch, f"nginx-replica{n}", tls=False, extra=behind,
                                             env={"SECURITY_AUDIT_LOG_FILE": f"{scratch.audit_log}-replica{n}"}))
        direct, replicas = servers[0], servers[1:]
        for n, group in enumerate((replicas[:1], replicas)):
            port = deployment.free_port()
            site = deployment.nginx_site([r.port for r in group], port, scratch.tls_dir)
            nginxes.append(deployment.Nginx(scratch.dir / f"nginx{n}", site, port))
        one, two = (ServerAt(nginxes[0].port, replicas[0].proc), ServerAt(nginxes[1].port, replicas[0].proc))
        stage(f"behind nginx: latency, 1 client, {args.warmup} warm-up + {args.iterations} calls, interleaved with "
              "direct HTTPS")
        (via_nginx,) = await open_sessions(one, scratch, 1)  # type: ignore[arg-type]
        (straight,) = await open_sessions(direct, scratch, 1)
        params = {"name": "docker_version", "arguments": {}}

        def step(session: HttpsSession, where: str) -> Callable[[], Any]:
            async def call() -> int:
                elapsed, status, payload = await session.send("tools/call", params)
                check_version(http_result(status, payload, where), where)
                return elapsed
            return call

        try:
            samples = await run_interleaved({"nginx": step(via_nginx, "nginx docker_version"),
                                             "direct": step(straight, "HTTPS docker_version")},
                                            args.warmup, args.iterations)
        finally:
            await close_sessions([via_nginx, straight])
        latency = {name: summarize_ns(values) for name, values in samples.items()}
        clients, warmup_s, seconds = 16, args.http_seconds / 5, args.http_seconds
        throughput: dict[str, Any] = {}
        cells = (("direct", direct, HttpsSession), ("nginx_1_replica", one, HttpsSession),
                 ("nginx_2_replicas", two, HttpsSession), ("stateless_1_replica", one, StatelessSession),
                 ("stateless_2_replicas", two, StatelessSession))
        for name, target, kind in cells:
            print(f"      {clients} clients: {name.replace('_', ' ')} ...", file=sys.stderr)
            throughput[name] = await https_cell(target, scratch, clients, warmup_s, seconds,  # type: ignore[arg-type]
                                                args.http_max_requests, kind)
        problems = [p for server in servers for p in server.log_problems()]
    finally:
        for runner in nginxes:
            runner.stop()
        for server in servers:
            server.stop()
    return {"latency": latency, "throughput": throughput, "clients": clients, "server_log_problems": problems}


# ---------------------------------------------------------------------------------------------
# 5. Memory for the last 1000 lines of a 50 MB log (stdio server), against docker-py alone
# ---------------------------------------------------------------------------------------------


def check_log_tail(lines: list[str], where: str) -> None:
    """The last LOG_TAIL lines of the log container: LOG_TAIL - 1 copies of LOG_LINE, then LOG_END."""
    if len(lines) != LOG_TAIL or lines[-1] != LOG_END or any(line != LOG_LINE for line in lines[:-1]):
        raise BenchError(f"{where}: expected the last {LOG_TAIL} log lines ending with {LOG_END!r}, got "
                         f"{len(lines)} lines, the last ending with {(lines or [''])[-1][-40:]!r}")


def wait_for_log(api: Any, container_id: str) -> float:
    """Seconds until the engine's last log line is LOG_END, i.e. its log holds all LOG_BYTES."""
    started = time.monotonic()
    while api.logs(container_id, tail=1, stream=False, follow=False).decode(errors="replace").strip() != LOG_END:
        if not api.inspect_container(container_id)["State"]["Running"]:
            raise BenchError("the log container stopped before writing its log")
        if time.monotonic() - started > 10 * TIMEOUT:
            raise BenchError(f"the log container had not written {LOG_BYTES} bytes after {10 * TIMEOUT:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - started


def log_floor(container_id: str) -> dict[str, Any]:
    """Peak RSS growth of a Python that makes only the tool's docker-py logs request."""
    with ready_python(LOG_FLOOR_CODE, "the log floor") as (proc, reader, _):
        assert proc.stdin is not None
        time.sleep(0.2)
        meter = PeakMeter(proc.pid)
        meter.start()
        write_all(proc.stdin.fileno(), container_id.encode() + b"\n")
        raw = reader.readline()
        memory = meter.stop()
    lines = json.loads(raw).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    check_log_tail(lines, "docker-py logs()")
    return memory


def bench_logs(api: Any, env: dict[str, str]) -> dict[str, Any]:
    script = f"yes '{LOG_LINE}' | head -c {LOG_BYTES}; echo {LOG_END}; exec sleep 3600"
    with BenchContainers(api, 1, ["sh", "-c", script]) as containers:
        container_id = containers.ids[0]
        write_seconds = wait_for_log(api, container_id)
        log_file_bytes = None
        with contextlib.suppress(OSError, KeyError, TypeError):  # the engine's own file, when readable
            log_file_bytes = os.path.getsize(api.inspect_container(container_id)["LogPath"])
        raw = RawMCPClient(env)
        try:
            try:
                raw.initialize()
                _, result = raw.call_tool("docker_version", {})  # the engine client exists before the window
                check_version(check_tool_result(result, "stdio docker_version"), "stdio docker_version")
                time.sleep(0.2)
                meter = PeakMeter(raw.proc.pid)
                meter.start()
                elapsed, result = raw.call_tool("docker_container_logs", {"container": container_id,
                                                                          "tail": LOG_TAIL})
                memory = meter.stop()
            except BenchError as error:
                raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
        finally:
            raw.close()
        structured = check_tool_result(result, "stdio docker_container_logs")
        # A wrong answer fails the run (status 1), but only after the figures are printed: they show
        # what the server did, and the other stages' figures are not thrown away.
        answer_error = None
        try:
            if structured.get("truncated"):
                raise BenchError(f"stdio docker_container_logs: the answer was cut: {str(structured)[:200]}")
            check_log_tail(list(structured.get("lines") or []), "stdio docker_container_logs")
        except BenchError as error:
            answer_error = str(error)
        floor = log_floor(container_id)
    return {"value": memory, "floor": floor, "call_ms": elapsed / 1e6, "answer_bytes": raw.last_line_bytes,
            "answer_error": answer_error, "log_bytes": LOG_BYTES, "log_write_seconds": write_seconds,
            "log_file_bytes": log_file_bytes, "tail": LOG_TAIL}


# ---------------------------------------------------------------------------------------------
# 6. Compose projects and file copies
# ---------------------------------------------------------------------------------------------


def compose_text(run_id: str) -> str:
    """Three sleeping services without a network, labelled for cleanup."""
    return "services:\n" + "".join(
        f"  s{number}:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    network_mode: none\n"
        f"    labels:\n      mcpbench.run: \"{run_id}\"\n" for number in range(3))


def remove_compose_project(api: Any, project: str) -> None:
    label = {"label": [f"com.docker.compose.project={project}"]}
    for container in api.containers(all=True, filters=label):
        with contextlib.suppress(Exception):
            api.remove_container(container["Id"], force=True, v=True)
    for network in api.networks(filters=label):
        with contextlib.suppress(Exception):
            api.remove_network(network["Id"])


def bench_compose(api: Any, env: dict[str, str], scratch: Scratch, runs: int) -> dict[str, Any]:
    """docker_compose_up of 3 services (model, judgement, create, judgement again, start, wait running)
    against the same Compose tool run directly on the same file (`up -d`), interleaved."""
    sys.path.insert(0, str(REPO))
    import mcp_docker as md

    kind = md.engine_kind(api.version())
    tool = md.compose_discovery(md.load_settings({}, os.environ), kind).tool
    if tool is None:
        raise BenchError("no Compose implementation for the compose stage")
    run_id = uuid.uuid4().hex[:10]
    text = compose_text(run_id)
    path = scratch.dir / "compose.yaml"
    path.write_text(text)
    tool_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(scratch.dir), "LANG": "C.UTF-8",
                **({"DOCKER_HOST": env["DOCKER_HOST"]} if env.get("DOCKER_HOST") else {})}
    raw = RawMCPClient(env)
    values: list[int] = []
    floors: list[int] = []
    projects: list[str] = []
    try:
        raw.initialize()
        for index in range(runs + 1):  # the first of each is a discarded warm-up
            for side in (("mcp", "cli") if index % 2 else ("cli", "mcp")):
                project = f"mcpbench{run_id}{side}{index}"
                projects.append(project)
                if side == "mcp":
                    elapsed, result = raw.call_tool("docker_compose_up", {"project": project, "compose": text})
                    services = check_tool_result(result, "stdio docker_compose_up").get("services") or []
                    if len(services) != 3 or any(s.get("state") != "running" for s in services):
                        raise BenchError(f"docker_compose_up: expected 3 running services, got {services}")
                else:
                    started = time.perf_counter_ns()
                    done = subprocess.run([*tool.argv, "-p", project, "-f", str(path), "up", "-d"], env=tool_env,
                                          cwd=scratch.dir, capture_output=True, timeout=TIMEOUT, check=False)
                    elapsed = time.perf_counter_ns() - started
                    if done.returncode != 0:
                        raise BenchError(f"compose up -d failed: {done.stderr.decode()[-300:]}")
                if index:
                    (values if side == "mcp" else floors).append(elapsed)
                remove_compose_project(api, project)
    except BenchError as error:
        raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
    finally:
        raw.close()
        for project in projects:
            remove_compose_project(api, project)
    return {"value": summarize_ns(values), "floor": summarize_ns(floors), "runs": runs,
            "tool": f"{tool.source} ({tool.flavor} {tool.version})"}


def copy_floor_in(api: Any, container_id: str, data: bytes) -> int:
    import io
    import tarfile

    started = time.perf_counter_ns()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("floor.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    api.put_archive(container_id, "/tmp", buffer.getvalue())
    return time.perf_counter_ns() - started


def copy_floor_out(api: Any, container_id: str, data: bytes) -> int:
    import io
    import tarfile

    started = time.perf_counter_ns()
    chunks, _ = api.get_archive(container_id, "/tmp/floor.bin", chunk_size=65536)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.next()
        handle = archive.extractfile(member) if member else None
        got = handle.read() if handle else b""
    elapsed = time.perf_counter_ns() - started
    if got != data:
        raise BenchError("the raw archive API returned other bytes than were written")
    return elapsed


def copy_floor_host_in(api: Any, container_id: str, source: str) -> int:
    """What `docker cp FILE CONTAINER:/tmp` does: read the host file, tar it, put_archive."""
    import io
    import tarfile

    started = time.perf_counter_ns()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(source, arcname="floor-host.bin")
    api.put_archive(container_id, "/tmp", buffer.getvalue())
    return time.perf_counter_ns() - started


def copy_floor_host_out(api: Any, container_id: str, target: str) -> int:
    """What `docker cp CONTAINER:/tmp/floor.bin FILE` does: get_archive, and the member written to a file."""
    import io
    import shutil
    import tarfile

    started = time.perf_counter_ns()
    chunks, _ = api.get_archive(container_id, "/tmp/floor.bin")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.next()
        handle = archive.extractfile(member) if member else None
        with open(target, "wb") as out:
            if handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    return time.perf_counter_ns() - started


def bench_copy(api: Any, env: dict[str, str], runs: int) -> dict[str, Any]:
    """10 MB in and out through MCP, against put_archive/get_archive of the same bytes (the floor builds
    and reads its tar too), interleaved: in the call (base64 content, base64 answer), and with host_path
    (a host file under SAFETY_COPY_HOST_ALLOWLIST, like `docker cp`, against the floor doing what
    `docker cp` does: the host file read and tarred, or the archive's member written to a host file)."""
    import base64
    import shutil
    import tempfile

    data = os.urandom(COPY_BYTES)
    encoded = base64.b64encode(data).decode()
    exchange = tempfile.mkdtemp(prefix="mcpbench-copy-")
    source = os.path.join(exchange, "in.bin")
    with open(source, "wb") as handle:
        handle.write(data)
    raw = RawMCPClient({**env, "MCP_COPY_MAX_BYTES": "32m", "MCP_MAX_OUTPUT_BYTES": str(32 * 1024 * 1024),
                         "MCP_HTTP_MAX_BODY_BYTES": str(32 * 1024 * 1024),  # the message cap, stdio too
                         "SAFETY_COPY_HOST_ALLOWLIST": exchange})
    samples: dict[str, list[int]] = {key: [] for key in ("in", "in_floor", "out", "out_floor", "host_in",
                                                         "host_in_floor", "host_out", "host_out_floor")}
    try:
        raw.initialize()
        with BenchContainers(api, 0) as containers:
            # the copy tools act only in containers the policy would have made: limits, no-new-privileges
            host_config = api.create_host_config(network_mode="none", mem_limit="256m", nano_cpus=10**9,
                                                 pids_limit=100, security_opt=["no-new-privileges:true"])
            container_id = api.create_container(IMAGE, command=["sleep", "3600"], name=f"{containers.prefix}copy",
                                                host_config=host_config,
                                                labels={"mcpbench.run": containers.run_id})["Id"]
            containers.ids.append(container_id)
            api.start(container_id)
            for index in range(runs + 1):
                elapsed, result = raw.call_tool("docker_copy_to_container", {
                    "container": container_id, "path": "/tmp/blob.bin", "encoding": "base64", "content": encoded})
                check_tool_result(result, "stdio docker_copy_to_container")
                floor_in = copy_floor_in(api, container_id, data)
                out_elapsed, result = raw.call_tool("docker_copy_from_container", {
                    "container": container_id, "path": "/tmp/blob.bin", "max_bytes": COPY_BYTES})
                answer = check_tool_result(result, "stdio docker_copy_from_container")
                blocks = result.get("content") or []  # the file is the text of the block the answer names
                block = blocks[answer["content_block"]] if isinstance(answer.get("content_block"), int) and \
                    answer["content_block"] < len(blocks) else {}
                if answer.get("truncated") or base64.b64decode(block.get("text") or "") != data:
                    raise BenchError("docker_copy_from_container did not return the bytes written")
                floor_out = copy_floor_out(api, container_id, data)
                host_in, result = raw.call_tool("docker_copy_to_container", {
                    "container": container_id, "path": "/tmp/host.bin", "host_path": source})
                check_tool_result(result, "stdio docker_copy_to_container host_path")
                host_in_floor = copy_floor_host_in(api, container_id, source)
                target = os.path.join(exchange, f"out{index}.bin")
                host_out, result = raw.call_tool("docker_copy_to_host", {
                    "container": container_id, "path": "/tmp/host.bin", "host_path": target})
                check_tool_result(result, "stdio docker_copy_to_host")
                with open(target, "rb") as handle:
                    if handle.read() != data:
                        raise BenchError("docker_copy_to_host did not write the bytes copied in")
                floor_target = os.path.join(exchange, f"floor{index}.bin")
                host_out_floor = copy_floor_host_out(api, container_id, floor_target)
                with open(floor_target, "rb") as handle:
                    if handle.read() != data:
                        raise BenchError("the raw archive API wrote other bytes than were copied in")
                for path in (target, floor_target):
                    os.unlink(path)
                if index:
                    for key, value in (("in", elapsed), ("in_floor", floor_in), ("out", out_elapsed),
                                       ("out_floor", floor_out), ("host_in", host_in),
                                       ("host_in_floor", host_in_floor), ("host_out", host_out),
                                       ("host_out_floor", host_out_floor)):
                        samples[key].append(value)
    except BenchError as error:
        raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
    finally:
        raw.close()
        shutil.rmtree(exchange, ignore_errors=True)
    return {key: summarize_ns(values) for key, values in samples.items()} | {"bytes": COPY_BYTES, "runs": runs}


# ---------------------------------------------------------------------------------------------
# 7. Swarm: create and scale a service (only on an engine that already is a swarm manager)
# ---------------------------------------------------------------------------------------------

SWARM_ITERATIONS = 30
# Tasks that can never be placed: scaling makes the manager create and schedule tasks, but no container
# starts, so neither side's clock (nor the next call's) pays for container starts.
SWARM_NOWHERE = "node.labels.mcpbench==never"


def api_at_least(api: Any, wanted: tuple[int, int]) -> bool:
    return tuple(int(part) for part in str(api.api_version).split(".")[:2]) >= wanted


def bench_service_spec(api: Any, name: str, replicas: int, constraints: list[str] | None = None) -> dict[str, Any]:
    """The spec the server sends for the benchmark's arguments: its labels and limits included (and
    no-new-privileges, on an API that has the field)."""
    labels = {"io.mcp-docker.managed": "true", "io.mcp-docker.client": "bench", "io.mcp-docker.created": "now"}
    container: dict[str, Any] = {"Image": IMAGE, "Args": ["sleep", "3600"], "Labels": labels}
    if api_at_least(api, NO_NEW_PRIVILEGES_API):
        container["Privileges"] = {"NoNewPrivileges": True}
    template: dict[str, Any] = {"ContainerSpec": container,
                                "Resources": {"Limits": {"MemoryBytes": 1024**3, "NanoCPUs": 10**9, "Pids": 512}}}
    if constraints:
        template["Placement"] = {"Constraints": constraints}
    return {"Name": name, "Labels": labels, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": replicas}}}


NO_NEW_PRIVILEGES_API = (1, 46)  # from here the server sets it, and inspects the service once to see it kept


@contextlib.contextmanager
def single_node_swarm(api: Any) -> Iterator[str | None]:
    """The engine as a swarm manager for the stage: as it is when it already is one; made a single-node
    swarm (advertised on 127.0.0.1) when it is in none, and left again at the end -- also on an error,
    Ctrl-C or SIGTERM -- with the docker_gwbridge network that `swarm init` adds, when it was not there.
    Yields None, or why the stage cannot run (a worker, a swarm in another state, Podman)."""
    version = api.version()
    if any("podman" in str(c.get("Name", "")).lower() for c in version.get("Components") or []):
        yield "Podman has no Swarm mode"
        return
    swarm = api.info().get("Swarm") or {}
    state = swarm.get("LocalNodeState") or "inactive"
    if state == "active" and swarm.get("ControlAvailable"):
        yield None
        return
    if state != "inactive":
        yield (f"the engine is a swarm worker (or its swarm is {state}): point DOCKER_HOST at a manager"
               if state == "active" else f"the engine's swarm is {state}; the benchmark leaves it alone")
        return
    had_gwbridge = bool(api.networks(names=["docker_gwbridge"]))
    print("  the engine is in no swarm: making a single-node one for this stage (left at the end)", file=sys.stderr)
    try:
        api.init_swarm(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        yield None
    finally:
        with contextlib.suppress(Exception):
            api.leave_swarm(force=True)
        for _ in range(20 if not had_gwbridge else 0):  # a network the engine still uses for a moment
            try:
                api.remove_network("docker_gwbridge")
                break
            except Exception as error:
                if "not found" in str(error).lower() or "no such network" in str(error).lower():
                    break
                time.sleep(0.5)


def bench_swarm(api: Any, env: dict[str, str], warmup: int, iterations: int) -> dict[str, Any]:
    """docker_create_service and docker_scale_service over stdio against the same API calls made directly,
    on the engine's swarm (or a single-node one made for the stage, see ``single_node_swarm``)."""
    with single_node_swarm(api) as unavailable:
        if unavailable:
            return {"skipped": unavailable}
        return bench_services(api, env, warmup, iterations)


def bench_services(api: Any, env: dict[str, str], warmup: int, iterations: int) -> dict[str, Any]:
    checks_no_new_privileges = api_at_least(api, NO_NEW_PRIVILEGES_API)
    prefix = f"mcpbench-{uuid.uuid4().hex[:8]}"
    counter = iter(range(1_000_000))
    raw = RawMCPClient({**env, "MCP_TOOLSETS": "swarm"})

    def create_via_server() -> int:
        name = f"{prefix}-s{next(counter)}"
        elapsed, result = raw.call_tool("docker_create_service", {"name": name, "image": IMAGE,
                                                                  "command": ["sleep", "3600"], "replicas": 0})
        if check_tool_result(result, "docker_create_service").get("status") != "created":
            raise BenchError(f"docker_create_service: {result}")
        return elapsed

    def create_direct() -> int:  # what the server sends: one create (and the inspect that sees NNP kept)
        spec = bench_service_spec(api, f"{prefix}-d{next(counter)}", 0)
        started = time.perf_counter_ns()
        answer = api._result(api._post_json(api._url("/services/create"), data=spec), json=True)
        if not answer.get("ID"):
            raise BenchError(f"services/create: {answer}")
        if checks_no_new_privileges:
            api.inspect_service(answer["ID"])
        return time.perf_counter_ns() - started

    scaled = {"server": 0, "direct": 0}

    def scale_via_server() -> int:
        scaled["server"] += 1
        elapsed, result = raw.call_tool("docker_scale_service", {"service": f"{prefix}-scale-server",
                                                                 "replicas": 1 + scaled["server"] % 2})
        if check_tool_result(result, "docker_scale_service").get("status") != "scaled":
            raise BenchError(f"docker_scale_service: {result}")
        return elapsed

    def scale_direct() -> int:  # what the server does, without the judging: inspect, then update
        scaled["direct"] += 1
        started = time.perf_counter_ns()
        service = api.inspect_service(f"{prefix}-scale-direct")
        spec = service["Spec"]
        spec["Mode"] = {"Replicated": {"Replicas": 1 + scaled["direct"] % 2}}
        api._result(api._post_json(api._url("/services/{0}/update", service["ID"]), data=spec,
                                   params={"version": service["Version"]["Index"]}), json=True)
        if checks_no_new_privileges:
            api.inspect_service(service["ID"])
        return time.perf_counter_ns() - started

    try:
        raw.initialize()
        for side in ("server", "direct"):
            api._result(api._post_json(api._url("/services/create"), data=bench_service_spec(
                api, f"{prefix}-scale-{side}", 1, [SWARM_NOWHERE])), json=True)
        samples = asyncio.run(run_interleaved({"create_server": create_via_server, "create_direct": create_direct,
                                               "scale_server": scale_via_server, "scale_direct": scale_direct},
                                              min(warmup, 5), iterations))
    except BenchError as error:
        raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
    finally:
        raw.close()
        for service in api.services(filters={"name": prefix}):
            if service["Spec"]["Name"].startswith(prefix):
                with contextlib.suppress(Exception):
                    api.remove_service(service["ID"])
    return {tool: {"server": summarize_ns(samples[f"{short}_server"]), "direct": summarize_ns(samples[f"{short}_direct"])}
            for tool, short in (("docker_create_service", "create"), ("docker_scale_service", "scale"))}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

FORMATS = {"ms": "{:.2f}", "req/s": "{:.0f}", "MB": "{:.1f}", "bytes": "{:.0f}"}
LABELS = {"docker_list_containers": ("list_containers (20)", "docker-py containers()"),
          "docker_version": ("version", "docker-py version()"),
          "docker_inspect_container": ("inspect_container", "docker-py inspect_container()")}


def row(metric: str, value: float, floor: float, floor_name: str, unit: str = "ms") -> dict[str, Any]:
    return {"metric": metric, "unit": unit, "value": round(value, 3), "floor_value": round(floor, 3),
            "ratio": round(value / floor, 3) if floor else None, "overhead": round(value - floor, 3),
            "floor": floor_name}


def build_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table, from whichever stages ran."""
    rows = []
    cold, genkey, latency = results.get("cold_start"), results.get("genkey"), results.get("latency")
    sizes, memory, https, logs = (results.get("tools_list"), results.get("https_memory"), results.get("https"),
                                  results.get("logs"))
    if cold is not None:
        rows.append(row("cold start: spawn -> initialize answer (median)", cold["value"]["median_ms"],
                        cold["floor"]["median_ms"], "spawn -> `import mcp.server.lowlevel` done"))
        if cold.get("single_file"):
            rows.append(row("cold start, single file `python3 mcp_docker.py` (median)",
                            cold["single_file"]["median_ms"], cold["floor"]["median_ms"],
                            "spawn -> `import mcp.server.lowlevel` done"))
    if genkey is not None:
        rows.append(row("genkey: spawn -> exit (median)", genkey["value"]["median_ms"], genkey["floor"]["median_ms"],
                        "spawn -> exit of `python3 -c pass`"))
    for tool, data in (latency or {}).items():
        short, floor_name = LABELS[tool]
        for client, client_name in (("raw", "stdio raw JSON-RPC"), ("sdk", "stdio mcp.Client")):
            if client not in data:
                continue
            for stat in ("median", "p90"):
                rows.append(row(f"{short} via {client_name} ({stat})", data[client][f"{stat}_ms"],
                                data["direct"][f"{stat}_ms"], f"{floor_name} ({stat})"))
    if sizes is not None:
        rows.append(row(f"tools/list answer, {sizes['tools']} tools (stdio)", sizes["wire_bytes"],
                        sizes["floor_bytes"], "same answer, tools cut to name + inputSchema", "bytes"))
        rows.append(row("tools/list bytes per tool (average)", sizes["per_tool_bytes"], sizes["floor_per_tool_bytes"],
                        "same, name + inputSchema only", "bytes"))
    if memory is not None:
        rows.append(row("HTTPS server RSS idle (start + 1 call)", memory["idle_kib"] * 1024 / 1e6,
                        memory["floor_kib"] * 1024 / 1e6, "python: import mcp.server.lowlevel + docker, 1 version()",
                        "MB"))
        rows.append(row(f"HTTPS server RSS with +{memory['sessions']} open sessions",
                        memory["loaded_kib"] * 1024 / 1e6, memory["idle_kib"] * 1024 / 1e6, "the same server idle",
                        "MB"))
    if https is not None:
        for tool, data in https["latency"].items():
            short, floor_name = LABELS[tool]
            for stat in ("median", "p99"):
                rows.append(row(f"{short} via HTTPS, 1 client ({stat})", data["https"][f"{stat}_ms"],
                                data["direct"][f"{stat}_ms"], f"{floor_name} ({stat})"))
        for clients, cell in https["throughput"].items():
            who = f"{clients} client{'s' if clients != '1' else ''}"
            threads = f"docker-py version(), {clients} thread{'s' if clients != '1' else ''}"
            rows.append(row(f"version via HTTPS, {who}: throughput", cell["https"]["rps"], cell["direct"]["rps"],
                            threads, "req/s"))
            for stat in ("p50", "p99"):
                rows.append(row(f"version via HTTPS, {who} ({stat})", cell["https"][f"{stat}_ms"],
                                cell["direct"][f"{stat}_ms"], f"{threads} ({stat})"))
    behind = results.get("nginx")
    if behind is not None:
        for stat in ("median", "p99"):
            rows.append(row(f"version via nginx (TLS there, HTTP to 1 replica), 1 client ({stat})",
                            behind["latency"]["nginx"][f"{stat}_ms"], behind["latency"]["direct"][f"{stat}_ms"],
                            f"version via mcp-docker's own HTTPS, 1 client ({stat})"))
        cells, who = behind["throughput"], f"{behind['clients']} clients"
        rows.append(row(f"version via nginx, 1 replica, {who}: throughput", cells["nginx_1_replica"]["rps"],
                        cells["direct"]["rps"], f"mcp-docker's own HTTPS, {who}", "req/s"))
        rows.append(row(f"version via nginx, 2 replicas, {who} in sessions: throughput", cells["nginx_2_replicas"]["rps"],
                        cells["nginx_1_replica"]["rps"], f"via nginx, 1 replica, {who}", "req/s"))
        rows.append(row(f"version via nginx, 2 replicas, {who} stateless (2026-07-28): throughput",
                        cells["stateless_2_replicas"]["rps"], cells["stateless_1_replica"]["rps"],
                        f"via nginx, 1 replica, {who} stateless", "req/s"))
        for stat in ("p50", "p99"):
            rows.append(row(f"version via nginx, 1 replica, {who} ({stat})", cells["nginx_1_replica"][f"{stat}_ms"],
                            cells["direct"][f"{stat}_ms"], f"mcp-docker's own HTTPS, {who} ({stat})"))
            rows.append(row(f"version via nginx, 2 replicas, {who} ({stat})", cells["nginx_2_replicas"][f"{stat}_ms"],
                            cells["nginx_1_replica"][f"{stat}_ms"], f"via nginx, 1 replica, {who} ({stat})"))
    for tool, data in ((results.get("swarm") or {}).get("latency") or {}).items():
        for stat in ("median", "p90"):
            rows.append(row(f"{tool} via stdio raw JSON-RPC ({stat})", data["server"][f"{stat}_ms"],
                            data["direct"][f"{stat}_ms"], f"the same API calls made directly ({stat})"))
    if logs is not None:
        what = f"logs tail={logs['tail']} of {logs['log_bytes'] / 1e6:g} MB, stdio server RSS"
        floor_name = f"python: docker-py logs(tail={logs['tail']}) only"
        for key, label in (("before", "before"), ("peak", "peak during the call"), ("after", "after"),
                           ("growth", "growth (peak - before)")):
            rows.append(row(f"{what} {label}", logs["value"][f"{key}_bytes"] / 1e6,
                            logs["floor"][f"{key}_bytes"] / 1e6, f"{floor_name}: {label}", "MB"))
    compose, copy = results.get("compose"), results.get("copy")
    if compose is not None:
        rows.append(row("docker_compose_up, 3 services (median)", compose["value"]["median_ms"],
                        compose["floor"]["median_ms"], f"{compose['tool']} up -d, same file (median)"))
    if copy is not None:
        size = f"{copy['bytes'] / 1e6:g} MB"
        rows.append(row(f"copy {size} into a container, host_path (median)", copy["host_in"]["median_ms"],
                        copy["host_in_floor"]["median_ms"], "host file tarred + docker-py put_archive (median)"))
        rows.append(row(f"copy {size} out of a container, host_path (median)", copy["host_out"]["median_ms"],
                        copy["host_out_floor"]["median_ms"], "docker-py get_archive to a host file (median)"))
        rows.append(row(f"copy {size} into a container, base64 in the call (median)", copy["in"]["median_ms"],
                        copy["in_floor"]["median_ms"], "docker-py put_archive of the same bytes (median)"))
        rows.append(row(f"copy {size} out of a container, base64 in the answer (median)", copy["out"]["median_ms"],
                        copy["out_floor"]["median_ms"], "docker-py get_archive of the same bytes (median)"))
    return rows


def target(name: str, value: float | None, limit: float | None, unit: str, compare: str,
           not_measured: str | None = None, wrong_answer: str | None = None) -> dict[str, Any]:
    """One target: ``value compare limit`` (``<=`` or ``>=``); met is None when it was not measured,
    and False whatever the figure when the answer measured was wrong."""
    if not_measured is not None or value is None or limit is None:
        return {"target": name, "value": None, "limit": None, "unit": unit, "compare": compare, "met": None,
                "note": f"not measured ({not_measured})"}
    met = value <= limit if compare == "<=" else value >= limit
    found = {"target": name, "value": round(value, 3), "limit": round(limit, 3), "unit": unit, "compare": compare,
             "met": met and wrong_answer is None}
    if wrong_answer is not None:
        found["note"] = f"the answer was wrong: {wrong_answer}"
    return found


def build_targets(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets from this run's figures (ms, req/s, bytes)."""
    def why(stage: str) -> str | None:
        if stage in args.only:
            return None
        return "--no-http" if stage in HTTP_STAGES and not args.http else f"stage {stage!r} not run"

    targets = []
    cold = results.get("cold_start")
    targets.append(target(f"cold start median <= {TARGET_COLD_RATIO:g}x the import floor",
                          cold and cold["value"]["median_ms"],
                          cold and TARGET_COLD_RATIO * cold["floor"]["median_ms"], "ms", "<=", why("cold")))
    latency_rows = [(f"stdio raw JSON-RPC {tool}", "stdio", tool, "raw")
                    for tool in ("docker_list_containers", "docker_version")]
    latency_rows += [(f"HTTPS 1 client {tool}", "https", tool, "https") for tool in LABELS]
    for name, stage, tool, client in latency_rows:
        data = (results.get("latency") if stage == "stdio" else (results.get("https") or {}).get("latency")) or {}
        cell = data.get(tool)
        targets.append(target(f"{name} median <= direct + {TARGET_LATENCY_OVERHEAD_MS:g} ms",
                              cell and cell[client]["median_ms"],
                              cell and cell["direct"]["median_ms"] + TARGET_LATENCY_OVERHEAD_MS, "ms", "<=",
                              why(stage)))
    cell = ((results.get("https") or {}).get("throughput") or {}).get(str(TARGET_THROUGHPUT_CLIENTS))
    reason = why("https")
    if reason is None and cell is None:
        reason = f"{TARGET_THROUGHPUT_CLIENTS} not in --http-clients"
    targets.append(target(f"HTTPS throughput at {TARGET_THROUGHPUT_CLIENTS} clients >= "
                          f"{TARGET_THROUGHPUT_RATIO:g}x direct", cell and cell["https"]["rps"],
                          cell and TARGET_THROUGHPUT_RATIO * cell["direct"]["rps"], "req/s", ">=", reason))
    memory = results.get("https_memory")
    targets.append(target(f"HTTPS server RSS idle <= {TARGET_RSS_IDLE_BYTES / 1e6:g} MB",
                          memory and memory["idle_kib"] * 1024, TARGET_RSS_IDLE_BYTES, "bytes", "<=", why("memory")))
    reason = why("memory")
    if reason is None and args.sessions != TARGET_SESSIONS:
        reason = f"--sessions {args.sessions}; the target is for {TARGET_SESSIONS}"
    targets.append(target(f"HTTPS server RSS with {TARGET_SESSIONS} sessions <= "
                          f"{TARGET_RSS_SESSIONS_BYTES / 1e6:g} MB", memory and memory["loaded_kib"] * 1024,
                          TARGET_RSS_SESSIONS_BYTES, "bytes", "<=", reason))
    logs = results.get("logs")
    targets.append(target(f"RSS growth for tail={LOG_TAIL} of a {LOG_BYTES / 1e6:g} MB log <= "
                          f"{TARGET_LOG_GROWTH_BYTES / 1e6:g} MB", logs and logs["value"]["growth_bytes"],
                          TARGET_LOG_GROWTH_BYTES, "bytes", "<=", why("logs"), logs and logs["answer_error"]))
    swarm = results.get("swarm") or {}
    for tool in ("docker_create_service", "docker_scale_service"):
        cell = (swarm.get("latency") or {}).get(tool)
        targets.append(target(f"stdio {tool} median <= direct + {TARGET_SWARM_OVERHEAD_MS:g} ms",
                              cell and cell["server"]["median_ms"],
                              cell and cell["direct"]["median_ms"] + TARGET_SWARM_OVERHEAD_MS, "ms", "<=",
                              why("swarm") or swarm.get("skipped")))
    sizes = results.get("tools_list")
    targets.append(target(f"tools/list <= {TARGET_TOOL_BYTES / 1000:g} kB per tool on average",
                          sizes and sizes["per_tool_bytes"], TARGET_TOOL_BYTES, "bytes", "<=", why("tools-list")))
    compose = results.get("compose")
    targets.append(target(f"docker_compose_up of 3 services <= {TARGET_COMPOSE_RATIO:g}x the Compose tool directly",
                          compose and compose["value"]["median_ms"],
                          compose and TARGET_COMPOSE_RATIO * compose["floor"]["median_ms"], "ms", "<=", why("compose")))
    copy = results.get("copy")
    for direction in ("in", "out"):
        # the bulk path (host_path, like docker cp); in-band copies are rows above, with their ratios
        targets.append(target(f"copy {COPY_BYTES / 1e6:g} MB {direction} (host_path) <= {TARGET_COPY_RATIO:g}x the "
                              "raw archive API", copy and copy[f"host_{direction}"]["median_ms"],
                              copy and TARGET_COPY_RATIO * copy[f"host_{direction}_floor"]["median_ms"], "ms", "<=",
                              why("copy")))
    return targets


def render_targets(targets: list[dict[str, Any]]) -> str:
    def amount(value: float, t: dict[str, Any]) -> str:  # in the scale of the limit: MB for MB limits
        if t["unit"] == "bytes":
            return f"{value / 1e6:.1f} MB" if t["limit"] >= 1e6 else f"{value:.0f} B"
        return f"{value:.2f} ms" if t["unit"] == "ms" else f"{value:.0f} {t['unit']}"

    width = max(len(t["target"]) for t in targets)
    lines = ["TARGETS"]
    for t in targets:
        if t["met"] is None:
            lines.append(f"  {'-':<8} {t['target']:<{width}}  {t['note']}")
        else:
            note = f" -- {t['note']}" if t.get("note") else ""
            lines.append(f"  {'MET' if t['met'] else 'NOT MET':<8} {t['target']:<{width}}  "
                         f"{amount(t['value'], t)} {t['compare']} {amount(t['limit'], t)}{note}")
    measured = [t for t in targets if t["met"] is not None]
    lines.append(f"  {sum(t['met'] for t in measured)} of {len(measured)} measured targets met, "
                 f"{len(targets) - len(measured)} not measured")
    return "\n".join(lines)


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "mcp-docker", "floor", "unit", "ratio", "overhead", "floor is")
    body = []
    for r in rows:
        number = FORMATS.get(r["unit"], "{:.2f}")
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        overhead = ("+" if r["overhead"] >= 0 else "") + number.format(r["overhead"])
        body.append((r["metric"], number.format(r["value"]), number.format(r["floor_value"]), r["unit"], ratio,
                     overhead, r["floor"]))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {1, 2, 4, 5}

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(line)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def context_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    cold, genkey, sizes = results.get("cold_start"), results.get("genkey"), results.get("tools_list")
    memory, https, logs = results.get("https_memory"), results.get("https"), results.get("logs")
    if cold is not None:
        context = cold["context"]
        lines.append(f"context: `python3 -c 'import mcp.server.lowlevel'` to exit (incl. teardown): "
                     f"{context['import_mcp_lowlevel_to_exit']['median_ms']:.1f} ms median; "
                     f"bare `python3 -c pass`: {context['bare_python_startup']['median_ms']:.1f} ms median")
    if genkey is not None:
        lines.append("genkey context (spawn -> exit, median): " + "; ".join(
            f"`python3 -c '{code}'` {genkey['context'][name]['median_ms']:.1f} ms"
            for name, code in GENKEY_CONTEXT.items()))
    if sizes is not None:
        lines.append("largest tools in tools/list (bytes): "
                     + ", ".join(f"{k} {v}" for k, v in sizes["largest_tools"].items()))
    if memory is not None:
        lines.append(f"memory: {memory['per_session_kib'] * 1024 / 1e3:.1f} kB per open session; "
                     f"{memory['sessions']} sessions opened at {memory['sessions_opened_per_second']:.0f}/s over "
                     f"{SESSION_CONNECTIONS} connections; HTTPS server start to listening "
                     f"{memory['server_start_ms']:.0f} ms")
    if https is not None:
        def pct(value: Any) -> str:
            return "n/a" if value is None else f"{value:.0f}%"

        for clients, cell in https["throughput"].items():
            h, d = cell["https"], cell["direct"]
            lines.append(f"CPU (% of one core; 2 cores = 200%), {clients} client(s): HTTPS cell: server "
                         f"{pct(h['server_cpu_pct'])}, bench client {pct(h['bench_client_cpu_pct'])}, engine "
                         f"{pct(h['engine_cpu_pct'])}; docker-py cell: client {pct(d['bench_client_cpu_pct'])}, "
                         f"engine {pct(d['engine_cpu_pct'])}; requests {h['requests']} vs {d['requests']}")
        lines.append(f"HTTPS load server RSS after all the load: {https['rss_after_load_kib'] * 1024 / 1e6:.1f} MB; "
                     f"audit log tool_call records for the HTTPS key: {https['audit_tool_calls']} "
                     f"(calls sent: {https['calls_sent']})")
    problems = (memory or {}).get("server_log_problems", []) + (https or {}).get("server_log_problems", [])
    if problems:
        lines.append("HTTPS server log warnings/errors: " + "; ".join(problems[:5]))
    if logs is not None:
        on_disk = "" if logs["log_file_bytes"] is None else f", {logs['log_file_bytes'] / 1e6:.1f} MB in the engine's file"
        lines.append(f"logs: {logs['log_bytes'] / 1e6:g} MB written in {logs['log_write_seconds']:.1f} s{on_disk}; "
                     f"the tail={logs['tail']} call took {logs['call_ms']:.0f} ms, answer {logs['answer_bytes']} "
                     f"bytes; peak by {logs['value']['method']} (floor: {logs['floor']['method']})")
    return lines


def environment(api: Any) -> dict[str, Any]:
    from importlib.metadata import version as dist_version

    import docker

    engine = api.version()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "mcp": dist_version("mcp"), "docker_py": docker.__version__,
            "engine": f"{engine.get('Version')} (API {engine.get('ApiVersion')})",
            "git_commit": git.stdout.strip() or None}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}")
        return value
    return parse


def seconds_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.1 <= value <= 600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 600 seconds")
    return value


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers") from None
    if not counts or any(not 1 <= c <= 256 for c in counts):
        raise argparse.ArgumentTypeError("give 1 to 256 clients per cell, e.g. 1,16,64")
    return list(dict.fromkeys(counts))


def stage_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in STAGES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(unknown) or text!r}; choose from {','.join(STAGES)}")
    return [name for name in STAGES if name in names]  # always in the order they run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=count(1), default=10, help="cold-start runs (default 10)")
    parser.add_argument("--iterations", type=count(1), default=200, help="timed tool calls per client (default 200)")
    parser.add_argument("--warmup", type=count(0), default=20, help="discarded calls per client first (default 20)")
    parser.add_argument("--json", default=str(REPO / "bench" / "results.json"), metavar="PATH",
                        help="where to write the JSON results (default bench/results.json)")
    parser.add_argument("--no-sdk", dest="sdk", action="store_false", help="skip the mcp.Client measurement")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip everything over HTTPS")
    parser.add_argument("--http-seconds", type=seconds_value, default=5.0,
                        help="measured seconds per throughput cell; a fifth of it is warm-up first (default 5)")
    parser.add_argument("--http-clients", type=client_counts, default=[1, 16, 64], metavar="N,N,...",
                        help="concurrent clients per throughput cell (default 1,16,64)")
    parser.add_argument("--http-max-requests", type=count(1), default=200_000,
                        help="at most this many requests per throughput cell (default 200000)")
    parser.add_argument("--swarm-iterations", type=count(1), default=SWARM_ITERATIONS,
                        help=f"timed create/scale calls of the swarm stage (default {SWARM_ITERATIONS})")
    parser.add_argument("--sessions", type=count(1, 990), default=500,  # the server's default cap is 1000
                        help="sessions held open for the memory figure (default 500, at most 990)")
    parser.add_argument("--only", type=stage_names, default=list(STAGES), metavar="STAGE,...",
                        help=f"run only these stages (default all: {','.join(STAGES)})")
    parser.add_argument("--server", choices=sorted(SERVER_FORMS), default="installed",
                        help="how servers are started: 'installed' runs the module from compiled bytecode as an "
                             "installed mcp-docker does (compiled first, like pip/pipx do at install); 'file' runs "
                             "`python3 mcp_docker.py`, compiled on every start (default installed)")
    parser.add_argument("--require-targets", action="store_true",
                        help="exit with status 2 when a measured target is not met (default: report only)")
    args = parser.parse_args(argv)
    if not args.http:
        args.only = [name for name in args.only if name not in HTTP_STAGES]
    if not args.only:
        parser.error("nothing to run: --only named only HTTPS stages and --no-http leaves them out")
    return args


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the finally blocks, so the containers are removed


def main(argv: list[str] | None = None) -> int:
    global server_argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    server_argv = SERVER_FORMS[args.server]
    if args.server == "installed":  # what pip and pipx do at install time; bytecode goes to __pycache__
        import importlib.util
        import py_compile

        py_compile.compile(str(SERVER), cfile=importlib.util.cache_from_source(str(SERVER)), doraise=True)
    import docker
    from docker.utils import kwargs_from_env

    started = time.monotonic()
    selected = set(args.only)
    total_stages = len(selected) + ("https" in selected)  # HTTPS latency and throughput are two
    stages = iter(range(1, total_stages + 1))

    def stage(text: str) -> None:
        print(f"[{next(stages)}/{total_stages}] {text} ...", file=sys.stderr)

    results: dict[str, Any] = {}
    try:
        with Scratch() as scratch:
            api = docker.APIClient(version="auto", **kwargs_from_env())  # the same client the server makes
            api.inspect_image(IMAGE)
            env = environment(api)
            print(f"mcp-docker benchmark: python {env['python']}, mcp {env['mcp']}, docker-py {env['docker_py']}, "
                  f"engine {env['engine']}, {env['cpus']} CPUs; stages {','.join(args.only)}; "
                  f"scratch directory {scratch.dir}", file=sys.stderr)
            if "cold" in selected:
                stage(f"cold start, {args.runs} runs each")
                results["cold_start"] = bench_cold_start(args.runs, scratch.env)
            if "genkey" in selected:
                stage(f"genkey, {args.runs} runs each")
                results["genkey"] = bench_genkey(args.runs, scratch)
            if selected & {"memory", "https", "nginx"}:
                scratch.make_credentials()
            if "memory" in selected:
                stage(f"HTTPS memory: idle, then {args.sessions} open sessions")
                results["https_memory"] = asyncio.run(bench_memory(scratch, args.sessions))
            if "tools-list" in selected:
                stage("tools/list size")
                results["tools_list"] = bench_tools_list(scratch.env)
            if selected & {"stdio", "https"}:
                with BenchContainers(api, CONTAINERS) as containers:
                    cases = tool_cases(containers.prefix, f"{containers.prefix}0", containers.ids[0])
                    if "stdio" in selected:
                        stage(f"stdio tool latency, {CONTAINERS} containers, {args.warmup} warm-up + "
                              f"{args.iterations} calls per client")
                        results["latency"] = asyncio.run(bench_latency(api, cases, args.warmup, args.iterations,
                                                                       args.sdk, scratch.env))
                    if "https" in selected:
                        results["https"] = asyncio.run(bench_https(scratch, api, cases, args, stage))
            if "nginx" in selected and not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")):
                print("nginx is not installed (.ci/engine-setup.sh installs it): the nginx stage is left out",
                      file=sys.stderr)
            elif "nginx" in selected:
                results["nginx"] = asyncio.run(bench_nginx(scratch, args, stage))
            if "logs" in selected:
                stage(f"memory for the last {LOG_TAIL} lines of a {LOG_BYTES / 1e6:g} MB log (stdio server)")
                results["logs"] = bench_logs(api, scratch.env)
            if "compose" in selected:
                stage(f"docker_compose_up of 3 services vs the Compose tool directly, {args.runs} runs each")
                results["compose"] = bench_compose(api, scratch.env, scratch, args.runs)
            if "copy" in selected:
                stage(f"copy {COPY_BYTES / 1e6:g} MB in and out vs the raw archive API, {args.runs} runs each")
                results["copy"] = bench_copy(api, scratch.env, args.runs)
            if "swarm" in selected:
                stage(f"swarm: create and scale a service, {args.swarm_iterations} calls each")
                found = bench_swarm(api, scratch.env, args.warmup, args.swarm_iterations)
                results["swarm"] = found if "skipped" in found else {"latency": found}
            https = results.get("https") or results.get("nginx")
            if https is not None:
                https["calls_sent"] = HttpsSession.calls_made
                https["audit_tool_calls"] = audit_tool_calls(scratch.audit_log)
                if https["audit_tool_calls"] < HttpsSession.calls_made:
                    raise BenchError(f"the audit log holds {https['audit_tool_calls']} tool_call records for "
                                     f"{HttpsSession.calls_made} HTTPS tool calls")
    except KeyboardInterrupt:
        print("interrupted (any benchmark containers, servers and files were removed)", file=sys.stderr)
        return 130
    except (BenchError, docker.errors.DockerException, subprocess.SubprocessError, OSError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1

    rows = build_rows(results)
    targets = build_targets(results, args)
    print()
    print(render_table(rows))
    print()
    for line in context_lines(results):
        print(line)
    how = []
    if selected & {"cold", "genkey"}:
        how.append(f"{' and '.join(n for n in ('cold', 'genkey') if n in selected)} {args.runs} runs")
    if selected & {"stdio", "https"}:
        how.append(f"latency {args.iterations} calls per client after {args.warmup} warm-up, interleaved")
    if "https" in selected:
        how.append(f"throughput {args.http_seconds:g} s per cell")
    print("; ".join([*how, "ratio = mcp-docker / floor (for req/s, below 1 means slower)", "MB = 10^6 bytes",
                     f"total {time.monotonic() - started:.0f} s"]))
    print()
    print(render_targets(targets))

    report = {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"runs": args.runs, "iterations": args.iterations, "warmup": args.warmup,
                     "containers": CONTAINERS, "image": IMAGE, "protocol_version": PROTOCOL_VERSION,
                     "server": args.server, "server_command": [*server_argv, "serve"],
                     "sdk": args.sdk, "http": args.http, "http_seconds": args.http_seconds,
                     "http_clients": args.http_clients, "http_max_requests": args.http_max_requests,
                     "sessions": args.sessions, "only": args.only, "require_targets": args.require_targets,
                     "log_bytes": LOG_BYTES, "log_tail": LOG_TAIL,
                     "server_env": UNREACHABLE_LIMITS | {"SECURITY_AUDIT_LOG_ENABLED": "true"}},
        "environment": env,
        "table": rows,
        "targets": targets,
        "cold_start": results.get("cold_start"),
        "genkey": results.get("genkey"),
        "latency": results.get("latency"),
        "tools_list": results.get("tools_list"),
        "https": results.get("https"),
        "https_memory": results.get("https_memory"),
        "logs": results.get("logs"),
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    if (results.get("logs") or {}).get("answer_error"):
        print(f"benchmark failed: {results['logs']['answer_error']}", file=sys.stderr)
        return 1
    if args.require_targets and any(t["met"] is False for t in targets):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
