"""The fuzz rig of mcp-docker's HTTP layer and JSON-RPC handling: the in-process server, its well-behaved
client, the hypothesis strategies and the checks every input goes through.

Used by the ``test_fuzz_*`` tests in test_mcp_docker.py (a few hundred inputs per property in CI) and by the
long run, ``bench/fuzz.py --inputs 100000`` (same strategies and checks), so that neither imports the other.

The server runs in this process (HttpServer on its own event loop in a thread), so after every input the
rig can compare its asyncio tasks, connections, sessions, stream slots and call slots with the baseline
taken before the input, and see every error it logged. Each input goes over a real socket; after it, a
fresh client must still get a session, a tool call answered by the engine, and a clean DELETE.
CI: derandomized and database-free (reproducible).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st

import mcp_docker as md

HERE = Path(__file__).resolve().parent
# The engine the rig's tool calls reach (as DOCKER_HOST); default: docker-py's default.
TEST_HOST = os.environ.get("MCP_DOCKER_TEST_HOST", "")
PREFIX = f"mcpfuzz{secrets.token_hex(3)}"  # names of engine objects the inputs ask for (none exists)
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}}}


def engine_available() -> bool:
    """Whether the engine the rig would use answers a ping."""
    import docker

    try:
        client = docker.DockerClient(base_url=TEST_HOST) if TEST_HOST else docker.from_env()
        with contextlib.closing(client):
            return bool(client.ping())
    except Exception:
        return False


def fuzz_keys(directory: Path, *client_ids: str) -> tuple[str, list[str]]:
    """A keys file in ``directory`` with one new key per client id (written as genkey writes it)."""
    keys_file = str(directory / "keys.json")
    directory.mkdir(parents=True, exist_ok=True)
    keys = [md.generate_api_key() for _ in client_ids]
    with md.KeysFileEditor(keys_file) as editor:
        editor.entries.extend(md.KeyEntry(client_id=client_id, key_hash=md.hash_api_key(key), created_at=md.utc_now())
                              for client_id, key in zip(client_ids, keys, strict=True))
        editor.save()
    return keys_file, keys


FUZZ_EXAMPLES = int(os.environ.get("MCP_DOCKER_FUZZ_EXAMPLES", "300"))
FUZZ_TOOLS = ("docker_version", "docker_list_containers", "docker_inspect_container", "docker_container_logs",
              "docker_container_stats", "docker_list_images", "docker_inspect_image", "docker_list_networks",
              "docker_list_volumes", "docker_list_engines")
# Text the server must never hand a client unless the client sent it first: stack traces, source and
# package paths, engine sockets, the server's state directory.
FUZZ_LEAK_MARKERS = ("Traceback", "site-packages", 'File "', ".py\"", "docker.sock", "podman.sock", "unix://",
                     str(HERE))


def fuzz_settings(examples: int | None = None, seed: int | None = None) -> hypothesis.settings:
    """CI: derandomized (a fixed seed derived from the test), no example database, no deadline."""
    # No shrinking: a leak stays in the server, so every later example would fail too and shrinking would
    # only wander; the first failing input is the one to report.
    return hypothesis.settings(max_examples=examples or FUZZ_EXAMPLES, derandomize=seed is None, database=None,
                               deadline=None, print_blob=False, suppress_health_check=list(HealthCheck),
                               phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate))


class FuzzFinding(AssertionError):
    """Something a fuzz input made the server do that it must not (crash, hang, 5xx, leak, unsanitized text)."""


class InProcessHttpServer:
    """mcp_docker's HttpServer on a private event loop in a thread: real sockets, visible internals."""

    def __init__(self, settings: md.Settings, audit_path: str):
        import logging

        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(
            f"event loop: {ctx.get('message')} {ctx.get('exception')!r}"))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fuzz-server")
        self.thread.start()
        server = self

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.ERROR or record.exc_info:
                    server.errors.append(f"{record.name}: {record.getMessage()}"
                                         + (f" [{record.exc_info[1]!r}]" if record.exc_info else ""))

        self.handler = Collect(logging.DEBUG)
        logging.getLogger().addHandler(self.handler)
        self.settings, self.audit_path = settings, audit_path
        self.call(self._start())

    async def _start(self) -> None:
        app = md.DockerMCP(self.settings)
        audit = md.AuditLog(self.audit_path, self.settings.audit_log_max_bytes, self.settings.audit_log_backups)
        app.audit, app.audit_problem = audit.write, audit.problem  # as serve wires it: fail closed on a bad log
        self.http = md.HttpServer(app, self.settings, audit)
        self.port = await self.http.bind()
        # HttpServer.run is bind + serve with signal handlers, which only the main thread may install
        self.stop = asyncio.Event()
        self.serving = asyncio.get_running_loop().create_task(self.http.serve(self.stop))

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _snapshot(self) -> dict[str, Any]:
        http, app = self.http, self.http.app
        return {"tasks": len(asyncio.all_tasks()) - 1, "connections": len(http.connections),
                "refusing": len(http.refusing), "server_tasks": len(app.tasks), "sessions": len(app.sessions),
                "sse_sessions": len(app.sse_sessions), "open_streams": sum(app.streams_by_principal.values()),
                "call_slots": sum(http.access.calls.active.values()), "in_flight": http.mcp.in_flight}

    def snapshot(self) -> dict[str, Any]:
        return self.call(self._snapshot())

    async def _end_sessions(self) -> None:
        """What the idle reaper would do in time: sessions may outlive their connections by design."""
        for session_id in list(self.http.app.sessions):
            await self.http.app.end_session(session_id, reason="fuzz")

    def settle(self, baseline: dict[str, Any], timeout: float = 8) -> dict[str, Any]:
        """End the sessions the input opened, then wait for everything to return to the baseline."""
        self.call(self._end_sessions())
        deadline = time.monotonic() + timeout
        while True:
            now = self.snapshot()
            if now == baseline or time.monotonic() > deadline:
                return now
            time.sleep(0.01)

    def close(self) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)

        async def stop() -> None:
            self.stop.set()  # the graceful stop: sessions, streams and connections end
            await self.serving
            await asyncio.sleep(0.1)

        with contextlib.suppress(Exception):
            self.call(stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def parse_http_responses(data: bytes, head_request: bool = False) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """Split what a server sent into (status, headers, body) responses; returns them and any bytes left over."""
    responses = []
    while data.startswith(b"HTTP/"):
        head, sep, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if not sep:
            responses.append((status, headers, b""))
            return responses, b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            body, data = b"", rest
        elif "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line, found, rest = rest.partition(b"\r\n")
                if not found or not size_line.strip():
                    break
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    rest = rest.partition(b"\r\n")[2]
                    break
                chunks.append(rest[:size])
                rest = rest[size + 2:]
            body, data = b"".join(chunks), rest
        else:
            body, data = rest, b""
        responses.append((status, headers, body))
    return responses, data


def fuzz_exchange(port: int, data: bytes, mode: str = "half-close", timeout: float = 15) -> bytes:
    """Send one input. half-close: shut our side and read until the server closes (a server that never
    does is hanging: FuzzFinding). abort: reset the connection at once, without reading."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if mode == "abort":
            import struct

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        started = time.monotonic()
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise FuzzFinding(f"no end of the exchange after {time.monotonic() - started:.0f}s: hang; "
                                  f"input {data[:300]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


class FuzzClient:
    """A well-behaved client of the in-process server: makes the sessions inputs refer to, and probes."""

    def __init__(self, server: InProcessHttpServer, key: str, other_key: str):
        self.server, self.key, self.other_key = server, key, other_key

    def post(self, body: Any, headers: dict[str, str] | None = None, path: str = "/mcp",
             method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"authorization": f"Bearer {self.key}", **MCP_HEADERS,
                                                          **(headers or {})})
            reply = conn.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            conn.close()

    def open_session(self, version: str = "2025-11-25") -> str:
        status, headers, body = self.post({**INIT, "params": {**INIT["params"], "protocolVersion": version}})
        assert status == 200, (status, body[:300])
        session = headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                         {"mcp-session-id": session, "mcp-protocol-version": version})[0] == 202
        return session

    def probe(self, call_tool: bool = True) -> None:
        """A valid client is served: health, a session, a ping, (a tool call answered by the engine,) a DELETE."""
        status, _, body = self.post(None, {}, "/healthz", "GET")
        if status != 200:
            raise FuzzFinding(f"/healthz answered {status} {body[:200]!r}")
        session = self.open_session()
        status, _, body = self.post({"jsonrpc": "2.0", "id": 76, "method": "ping"}, {"mcp-session-id": session})
        if status != 200 or json.loads(body).get("id") != 76:
            raise FuzzFinding(f"a valid ping after the input got {status} {body[:300]!r}")
        call = {"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {"name": "docker_version",
                                                                              "arguments": {}}}
        status, _, body = self.post(call, {"mcp-session-id": session}) if call_tool else (200, {}, b"")
        answer = json.loads(body) if status == 200 and call_tool else {"id": 77, "result": {
            "structuredContent": {"api_version": "-"}}}
        content = answer.get("result", {}).get("structuredContent") or {}
        if status != 200 or answer.get("id") != 77 or not content.get("api_version"):
            raise FuzzFinding(f"a valid tools/call after the input got {status} {body[:300]!r}")
        if self.post(None, {"mcp-session-id": session}, method="DELETE")[0] != 200:
            raise FuzzFinding("DELETE of a fresh session failed after the input")

    def legacy_session(self) -> tuple[socket.socket, str]:
        """GET /sse held open: returns the socket (still streaming) and its session id."""
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=15)
        sock.sendall((f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
                      "Accept: text/event-stream\r\n\r\n").encode())
        seen = b""
        while b"session_id=" not in seen or b"\n\n" not in seen.split(b"session_id=", 1)[1]:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
        session_id = re.search(rb"session_id=([0-9a-f]+)", seen).group(1).decode()
        return sock, session_id


def check_replies(sent: bytes, received: bytes, head_request: bool = False) -> list[tuple[int, dict[str, str], bytes]]:
    """Per-reply rules: no 5xx but a 503 with Retry-After, JSON bodies parse, nothing leaks that the client
    did not send itself."""
    for marker in FUZZ_LEAK_MARKERS:
        if marker.encode() in received and marker.encode() not in sent:
            raise FuzzFinding(f"reply reveals {marker!r}: {received[:600]!r}")
    replies, _ = parse_http_responses(received, head_request)
    for status, headers, body in replies:
        if status >= 500 and not (status == 503 and "retry-after" in headers):
            raise FuzzFinding(f"status {status} for input {sent[:300]!r}: {body[:300]!r}")
        if headers.get("content-type") == "application/json" and body:
            try:
                json.loads(body)
            except ValueError:
                raise FuzzFinding(f"invalid JSON body {body[:300]!r}") from None
    return replies


class FuzzRig:
    """One in-process server plus the checks every fuzz input goes through."""

    def __init__(self, directory: Path):
        keys_file, (key, other_key) = fuzz_keys(directory, "fuzz", "fuzz-other")
        settings = md.Settings(
            transport="http", host="127.0.0.1", port=0, api_keys_file=keys_file, docker_host=TEST_HOST,
            allow_moderate=False, allowed_tools=FUZZ_TOOLS, http_header_timeout=1.0, http_body_timeout=1.0,
            http_keepalive_timeout=2.0, http_max_header_bytes=8192, http_max_body_bytes=64 * 1024,
            http_max_streams_per_principal=8, http_max_sessions=200, rate_limit_enabled=True,
            rate_limit_rpm=1_000_000, rate_limit_burst=1_000_000, rate_limit_concurrent=4,
            auth_failure_limit=1_000_000, audit_log_file=str(directory / "audit.log"))
        self.server = InProcessHttpServer(settings, str(directory / "audit.log"))
        self.client = FuzzClient(self.server, key, other_key)
        self.count = 0
        # After every input: health, a session, a ping, a DELETE; every Nth also a tool call through the engine
        # (the engine's answer is what costs: Podman's /version takes ~0.3 s here).
        self.full_probe_every = int(os.environ.get("MCP_DOCKER_FUZZ_TOOL_CALL_EVERY", "10"))
        self.statuses: dict[int, int] = {}
        self.client.probe()  # warm: the SDK's lazy imports, the engine connection, the validators
        self.baseline = self.quiet_snapshot()
        self.server.errors.clear()

    def quiet_snapshot(self, timeout: float = 20) -> dict[str, Any]:
        """The server's state once nothing is open or running and it stays so."""
        deadline = time.monotonic() + timeout
        previous = None
        while time.monotonic() < deadline:
            now = self.server.snapshot()
            if now == previous and not (now["connections"] or now["sessions"] or now["in_flight"]):
                return now
            previous = now
            time.sleep(0.1)
        raise AssertionError(f"the server did not settle: {previous}")

    def substitute(self, data: bytes, values: dict[str, str]) -> bytes:
        values = {"KEY": self.client.key, "OTHER_KEY": self.client.other_key, "PORT": str(self.server.port),
                  **values}
        for name, value in values.items():
            data = data.replace(b"{" + name.encode() + b"}", value.encode())
        return data

    def after(self, what: str) -> None:
        """After each input: nothing logged as an error, nothing leaked, and a valid client is served."""
        self.count += 1
        now = self.server.settle(self.baseline)
        if now != self.baseline:
            raise FuzzFinding(f"leak after {what}: {now} != baseline {self.baseline}")
        if self.server.errors:
            errors, self.server.errors[:] = list(self.server.errors), []
            raise FuzzFinding(f"server logged errors after {what}: {errors[:3]}")
        self.client.probe(call_tool=self.count % self.full_probe_every == 0)
        self.server.errors.clear()

    def note(self, replies: list[tuple[int, dict[str, str], bytes]]) -> None:
        for status, _, _ in replies:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def close(self) -> None:
        self.server.close()


# -- strategies ---------------------------------------------------------------------------------

HUGE_NUMBERS = (2**63, -(2**63) - 1, 2**64 + 1, 10**400, -(10**400), 1e308, -0.0, 5e-324)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_NUMBERS),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
                         st.sampled_from(["", "tools/call", "2.0", "{SESSION}", "../../etc/passwd", "\x00", "é" * 5]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=10)
request_ids = st.one_of(st.integers(-5, 10**6), st.text(max_size=12), st.sampled_from(HUGE_NUMBERS),
                        st.sampled_from([None, True, [], {}, 1.5]))


def tool_arguments(name: str) -> dict[str, Any]:
    container = f"{PREFIX}-fuzz-missing"
    return {"docker_inspect_container": {"container": container},
            "docker_container_logs": {"container": container, "tail": 5},
            "docker_container_stats": {"container": container},
            "docker_list_containers": {"all": True, "limit": 3, "name": PREFIX},
            "docker_inspect_image": {"image": f"{PREFIX}-fuzz-missing:1"},
            "docker_list_images": {"limit": 3}}.get(name, {})


def valid_messages(modern: bool = False) -> list[dict[str, Any]]:
    """One valid message of every kind a client sends (requests, notifications, responses)."""
    call = [{"method": "tools/call", "params": {"name": n, "arguments": tool_arguments(n)}} for n in FUZZ_TOOLS]
    requests = [{"method": "ping"}, {"method": "tools/list"}, {"method": "tools/list", "params": {"cursor": "x"}},
                *call, {"method": "tools/call", "params": {"name": "docker_remove_container", "arguments": {}}},
                {"method": "tools/call", "params": {"name": "no_such_tool"}},
                {"method": "resources/list"}, {"method": "resources/templates/list"},
                {"method": "resources/read", "params": {"uri": f"docker://containers/{PREFIX}-x/logs"}},
                {"method": "resources/read", "params": {"uri": "file:///etc/passwd"}},
                {"method": "prompts/list"},
                {"method": "prompts/get", "params": {"name": "troubleshoot_container",
                                                     "arguments": {"container": f"{PREFIX}-x"}}},
                {"method": "logging/setLevel", "params": {"level": "debug"}},
                {"method": "completion/complete", "params": {
                    "ref": {"type": "ref/prompt", "name": "troubleshoot_container"},
                    "argument": {"name": "container", "value": "a"}}},
                {"method": "initialize", "params": INIT["params"]}, {"method": "no/such/method"}]
    if modern:
        requests.append({"method": "server/discover"})
        envelope = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}}
        return [{"jsonrpc": "2.0", "id": i, **r, "params": {**r.get("params", {}), "_meta": envelope}}
                for i, r in enumerate(requests, 1)]
    notifications = [{"method": "notifications/initialized"},
                     {"method": "notifications/cancelled", "params": {"requestId": 1}},
                     {"method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
                     {"method": "notifications/roots/list_changed"}]
    responses = [{"id": 1, "result": {}}, {"id": 2, "error": {"code": -32601, "message": "no"}}]
    return ([{"jsonrpc": "2.0", "id": i, **r} for i, r in enumerate(requests, 1)]
            + [{"jsonrpc": "2.0", **n} for n in notifications] + [{"jsonrpc": "2.0", **r} for r in responses])


@st.composite
def mutated(draw: Any, message: dict[str, Any]) -> Any:
    """A valid message with a few of its parts deleted, replaced, retyped, duplicated or nested deep."""
    value: Any = json.loads(json.dumps(message))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["delete", "replace", "id", "method", "extra", "params", "deep", "args",
                                     "meta"]))
        if not isinstance(value, dict):
            break
        if kind == "delete" and value:
            value.pop(draw(st.sampled_from(sorted(value))))
        elif kind == "replace" and value:
            value[draw(st.sampled_from(sorted(value)))] = draw(json_values)
        elif kind == "id":
            value["id"] = draw(request_ids)
        elif kind == "method":
            value["method"] = draw(st.one_of(st.text(max_size=20), json_values, st.sampled_from(
                ["tools/call", "initialize", "notifications/cancelled", "TOOLS/CALL", "tools/call ", "rpc.x"])))
        elif kind == "extra":
            value[draw(st.text(max_size=8))] = draw(json_values)
        elif kind == "params":
            value["params"] = draw(json_values)
        elif kind == "deep":
            depth = draw(st.sampled_from([30, 200, 900, 990, 2000, 20000]))
            inner: Any = draw(json_scalars)
            for _ in range(depth):
                inner = [inner] if draw(st.booleans()) else {"a": inner}
            where = draw(st.sampled_from(["params", "args", "id", "meta"]))
            if where == "args" and isinstance(value.get("params"), dict):
                value["params"]["arguments"] = {"container": inner}
            elif where == "meta" and isinstance(value.get("params"), dict):
                value["params"]["_meta"] = {"progressToken": inner}
            else:
                value["params" if where == "params" else "id"] = inner
        elif kind == "args" and isinstance(value.get("params"), dict):
            arguments = value["params"].get("arguments")
            arguments = dict(arguments) if isinstance(arguments, dict) else {}
            if arguments and draw(st.booleans()):
                arguments[draw(st.sampled_from(sorted(arguments)))] = draw(json_values)
            else:
                arguments[draw(st.sampled_from(["container", "limit", "all", "tail", "since", "engine", "x"]))] = \
                    draw(json_values)
            value["params"]["arguments"] = arguments
        elif kind == "meta" and isinstance(value.get("params"), dict):
            meta = value["params"].get("_meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            meta[draw(st.sampled_from(["progressToken", "io.modelcontextprotocol/protocolVersion",
                                       "io.modelcontextprotocol/clientCapabilities", "io.modelcontextprotocol/logLevel",
                                       "x"]))] = draw(json_values)
            value["params"]["_meta"] = meta
    return value


def jsonrpc_bodies(modern: bool = False) -> st.SearchStrategy[bytes]:
    """Bodies: mutated valid messages, batches of them, random JSON, deep nesting, and bytes that are not JSON."""
    message = st.sampled_from(valid_messages(modern)).flatmap(mutated)

    def encode(value: Any) -> bytes:
        try:
            return json.dumps(value).encode()
        except (RecursionError, ValueError):
            return b"[]"

    deep = st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n)
    raw = st.sampled_from([b"", b"null", b"[]", b"{}", b"[[]]", b"NaN", b"Infinity", b'{"jsonrpc":"2.0","id":NaN,'
                           b'"method":"ping"}', b"1e999999", b'"\\ud800"', b'{"a":1,"a":2}', b"\xff\xfe{}",
                           b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"x":1}', b"{" * 50])
    return st.one_of(message.map(encode), st.lists(message, min_size=1, max_size=6).map(encode),
                     json_values.map(encode), deep, raw, st.binary(max_size=200))


HEADER_VALUES: dict[str, list[str]] = {
    "host": ["127.0.0.1", "127.0.0.1:{PORT}", "localhost", "[::1]:{PORT}", "evil.example", "", "127.0.0.1:{PORT}:1",
             "[::1", "127.0.0.1, evil.example", "a" * 300],
    "origin": ["http://127.0.0.1:{PORT}", "https://localhost", "null", "", "https://evil.example", "http://[::1",
               "http://127.0.0.1:{PORT}/"],
    "authorization": ["Bearer {KEY}", "Bearer {OTHER_KEY}", "Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "bearer {KEY}",
                      "Bearer {KEY} extra", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "MCP-SSH-Signature x",
                      'MCP-SSH-Signature keyid="SHA256:x", ts="1", nonce="n", sig="%%%"', "Bearer " + "k" * 3000],
    "accept": ["application/json, text/event-stream", "*/*", "text/event-stream", "application/json", "", "*/*;q=0",
               "text/*, application/*"],
    "content-type": ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/json;;"],
    "mcp-session-id": ["{SESSION}", "{SESSION}x", "", "nope", "{SESSION}, {SESSION}", "\u00e9"],
    "mcp-protocol-version": ["2025-11-25", "2025-03-26", "2024-11-05", "2026-07-28", "", "1999-01-01", "2026-07-28x"],
    "mcp-method": ["tools/call", "ping", "tools/list", ""], "mcp-name": ["docker_version", "", "x"],
    "last-event-id": ["", "x-1", "{SESSION}-1", "-", "abc-99999999999999999999", "a-b-c", "-1"],
    "x-forwarded-for": ["1.2.3.4", "", "not-an-ip", "::1, 127.0.0.1"],
    "connection": ["close", "keep-alive", "upgrade", ""], "expect": ["100-continue"],
    "transfer-encoding": ["gzip", "chunked, gzip", "identity"],
}
header_values = {name: st.sampled_from(values) for name, values in HEADER_VALUES.items()}


@st.composite
def header_lists(draw: Any) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for name in ("host", "authorization", "accept", "content-type", "mcp-session-id", "mcp-protocol-version"):
        if draw(st.integers(0, 9)) < 8:
            value = "127.0.0.1:{PORT}" if name == "host" and draw(st.booleans()) else draw(header_values[name])
            value = {"authorization": "Bearer {KEY}", "mcp-session-id": "{SESSION}", "host": "127.0.0.1:{PORT}",
                     "accept": "application/json, text/event-stream", "content-type": "application/json",
                     "mcp-protocol-version": "2025-11-25"}.get(name, value) if draw(st.booleans()) else value
            headers.append((name.encode(), value.encode()))
    extra = st.one_of(
        st.sampled_from(sorted(HEADER_VALUES)).flatmap(lambda n: header_values[n].map(lambda v: (n.encode(), v.encode()))),
        st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60)),
        st.tuples(st.sampled_from([b"X-A", b"Host", b"Content-Length", b" Host", b"Host ", b"X\x00Y", b""]),
                  st.binary(max_size=40)))
    headers += draw(st.lists(extra, max_size=4))
    return draw(st.permutations(headers))


def frame_body(draw: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    kind = draw(st.sampled_from(["length"] * 6 + ["chunked"] * 3 + ["none", "short", "long", "twice", "negative",
                                                                     "junk-length", "both", "bad-chunks"]))
    if kind == "length":
        return [*headers, (b"Content-Length", str(len(body)).encode())], body
    if kind == "none":
        return headers, body
    if kind == "short":
        return [*headers, (b"Content-Length", str(max(0, len(body) - draw(st.integers(1, 20)))).encode())], body
    if kind == "long":
        return [*headers, (b"Content-Length", str(len(body) + draw(st.integers(1, 10**6))).encode())], body
    if kind == "twice":
        return [*headers, (b"Content-Length", str(len(body)).encode()),
                (b"Content-Length", str(draw(st.integers(0, 99))).encode())], body
    if kind == "negative":
        return [*headers, (b"Content-Length", draw(st.sampled_from([b"-1", b"1e3", b"0x10", b"", b" 5", b"+5"])))], body
    if kind == "junk-length":
        return [*headers, (b"Content-Length", draw(st.sampled_from([str(10**30).encode(), b"9" * 400])))], body
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=5))) | {0, len(body)})
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    encoded = b"".join(f"{len(p):x}".encode() + draw(st.sampled_from([b"", b";ext=1"])) + b"\r\n" + p + b"\r\n"
                       for p in pieces)
    ending = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"", b"0\r\n"]))
    encoded += ending
    if kind == "bad-chunks":
        encoded = draw(st.sampled_from([b"zz\r\n", b"ffffffffffffffffffff\r\n", b"-1\r\n", b"5\r\nabc\r\n",
                                        b"3\r\nabcdef\r\n0\r\n\r\n"])) + encoded
    framed = [*headers, (b"Transfer-Encoding", b"chunked")]
    if kind == "both":
        framed.append((b"Content-Length", str(len(body)).encode()))
    return framed, encoded


@st.composite
def mutate_bytes(draw: Any, data: bytes) -> bytes:
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + draw(st.sampled_from([b"\r\n", b"\n", b"\x00", b" ", b":", b"\r\n\r\n", b"\xff"])) + \
                data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 20)):]
        elif kind == "truncate":
            data = data[:at]
        else:
            data = data[:at] + data[at:at + 40] * draw(st.integers(2, 200)) + data[at + 40:]
    return data


@st.composite
def http_inputs(draw: Any) -> tuple[bytes, str, bool]:
    """A whole request (or pipelined requests) as bytes, how to end the exchange, and whether it is a HEAD."""
    method = draw(st.sampled_from(["POST"] * 6 + ["GET"] * 3 + ["DELETE", "HEAD", "PUT", "OPTIONS", "get", "P\u00d6ST",
                                                            "", "CONNECT", "TRACE"]))
    target = draw(st.sampled_from(["/mcp", "/mcp", "/sse", "/messages?session_id={SESSION}", "/messages", "/healthz",
                                   "/", "/mcp?x=1&x=2", "*", "http://127.0.0.1/mcp", "/%00", "//mcp",
                                   "/mcp/../healthz", "/mcp#frag", "/messages?session_id=%ff%fe", "/\u00e9",
                                   "/mcp?" + "a=" * 2000, "/.well-known/oauth-protected-resource"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", "", "HTTP/9.9",
                                                        "http/1.1"]))
    eol = draw(st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r"]))
    headers, body = frame_body(draw, draw(header_lists()), draw(jsonrpc_bodies(draw(st.booleans()))))
    line = f"{method} {target} {version}".encode()
    data = eol.join([line, *(k + b": " + v for k, v in headers)]) + eol + eol + body
    if draw(st.integers(0, 5)) == 0:  # a second request pipelined behind the first
        data += b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data = draw(mutate_bytes(data))
    mode = draw(st.sampled_from(["half-close"] * 5 + ["abort"]))
    return data, mode, method == "HEAD"


@st.composite
def jsonrpc_inputs(draw: Any) -> tuple[str, bytes, str]:
    """(era, body, session protocol version): JSON-RPC bodies over correct HTTP."""
    era = draw(st.sampled_from(["session", "session", "modern", "legacy"]))
    version = draw(st.sampled_from(["2025-11-25", "2025-03-26", "2025-06-18"]))
    return era, draw(jsonrpc_bodies(era == "modern")), version


# -- the fuzz runs ------------------------------------------------------------------------------


def fuzz_http_input(rig: FuzzRig, case: tuple[bytes, str, bool]) -> None:
    data, mode, head = case
    session = rig.client.open_session()
    sent = rig.substitute(data, {"SESSION": session})
    received = fuzz_exchange(rig.server.port, sent, mode)
    if mode != "abort":
        rig.note(check_replies(sent, received, head))
    rig.after(f"HTTP input {sent[:200]!r}")


def fuzz_jsonrpc_input(rig: FuzzRig, case: tuple[str, bytes, str]) -> None:
    era, body, version = case
    session = rig.client.open_session(version)
    body = rig.substitute(body, {"SESSION": session})
    head = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    stream = None
    if era == "session":
        head |= {"mcp-session-id": session, "mcp-protocol-version": version}
        path = "/mcp"
    elif era == "modern":
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            decoded = None
        method = decoded.get("method") if isinstance(decoded, dict) else None
        head |= {"mcp-protocol-version": "2026-07-28", **({"mcp-method": method} if isinstance(method, str) else {})}
        params = decoded.get("params") if isinstance(decoded, dict) else None
        if isinstance(params, dict) and isinstance(params.get("name"), str):
            head["mcp-name"] = params["name"]
        path = "/mcp"
    else:
        stream, legacy_id = rig.client.legacy_session()
        path = f"/messages?session_id={legacy_id}"
    try:
        head_bytes = "".join(f"{k}: {v}\r\n" for k, v in head.items() if all(ord(c) < 256 for c in v))
        sent = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {rig.client.key}\r\n{head_bytes}"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        received = fuzz_exchange(rig.server.port, sent)
        replies = check_replies(sent, received)
        rig.note(replies)
        if not replies:
            raise FuzzFinding(f"no reply at all to a well-framed POST: {sent[:300]!r}")
    finally:
        if stream is not None:
            stream.close()
    rig.after(f"{era} JSON-RPC body {body[:200]!r}")


@st.composite
def reconnect_inputs(draw: Any) -> list[tuple[str, Any]]:
    """A sequence of SSE actions on one session whose POST answered as a stream with event ids."""
    steps = st.one_of(
        st.tuples(st.just("resume"), st.sampled_from(["real", "real", "seq0", "seq-big", "seq-neg", "unknown",
                                                      "empty", "junk", "dashes", "unicode"])),
        st.tuples(st.just("get"), st.sampled_from(["read", "abort", "half-close"])),
        st.tuples(st.just("concurrent"), st.integers(2, 4)),
        st.tuples(st.just("call"), st.sampled_from(FUZZ_TOOLS)),
        st.tuples(st.just("legacy"), st.sampled_from(["read", "abort", "post-then-close"])),
        st.tuples(st.just("delete"), st.none()))
    return draw(st.lists(steps, min_size=1, max_size=5))


def sse_request(rig: FuzzRig, session: str, last_event_id: str | None = None) -> bytes:
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
    return (f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {rig.client.key}\r\n"
            f"Mcp-Session-Id: {session}\r\nAccept: text/event-stream\r\n{extra}\r\n").encode("utf-8", "replace")


def streamed_call(rig: FuzzRig, session: str, tool_name: str) -> list[str]:
    """A tools/call after logging/setLevel debug: the log message makes the answer an SSE stream with ids."""
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": tool_name, "arguments": tool_arguments(tool_name), "_meta": {"progressToken": "p"}}}
    status, headers, body = rig.client.post(call, {"mcp-session-id": session})
    if status >= 500:
        raise FuzzFinding(f"tools/call {tool_name} answered {status}")
    return re.findall(r"^id: (\S+)$", body.decode(errors="replace"), re.M)


def fuzz_reconnects(rig: FuzzRig, steps: list[tuple[str, Any]]) -> None:
    session = rig.client.open_session()
    assert rig.client.post({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}},
                           {"mcp-session-id": session})[0] == 200
    ids = streamed_call(rig, session, "docker_version")
    if not ids:
        raise FuzzFinding("a tools/call with a log message did not answer as an SSE stream with event ids")
    for action, arg in steps:
        if action == "call":
            ids += streamed_call(rig, session, arg)
        elif action == "resume":
            stream_id, _, seq = ids[-1].rpartition("-")
            value = {"real": ids[0], "seq0": f"{stream_id}-0", "seq-big": f"{stream_id}-{10**30}",
                     "seq-neg": f"{stream_id}--1", "unknown": "000000000000-1", "empty": "", "junk": "\x7f\x01",
                     "dashes": f"{stream_id}-{seq}-{seq}", "unicode": f"{stream_id}-\u0661"}[arg]
            sent = sse_request(rig, session, value)
            rig.note(check_replies(sent, fuzz_exchange(rig.server.port, sent)))
        elif action == "get":
            sent = sse_request(rig, session)
            if arg == "read":  # read the head of the standalone stream, then go away
                with socket.create_connection(("127.0.0.1", rig.server.port), timeout=15) as sock:
                    sock.sendall(sent)
                    if not sock.recv(4096).startswith(b"HTTP/1.1"):
                        raise FuzzFinding("GET /mcp stream gave no status line")
            else:
                rig.note(check_replies(sent, fuzz_exchange(rig.server.port, sent, arg)))
        elif action == "concurrent":
            sent = sse_request(rig, session, ids[0])
            socks = [socket.create_connection(("127.0.0.1", rig.server.port), timeout=15) for _ in range(arg)]
            try:
                for sock in socks:
                    sock.sendall(sent)
                for sock in socks:  # each one goes away once it has its status: the next may then attach
                    if not sock.recv(4096).startswith(b"HTTP/1.1"):
                        raise FuzzFinding("a concurrent resume gave no status line")
                    sock.close()
            finally:
                for sock in socks:
                    sock.close()
        elif action == "legacy":
            stream, legacy_id = rig.client.legacy_session()
            try:
                if arg == "post-then-close":
                    rig.client.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT["params"]},
                                    path=f"/messages?session_id={legacy_id}")
                if arg == "abort":
                    import struct

                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                stream.close()
        elif action == "delete":
            status = rig.client.post(None, {"mcp-session-id": session}, method="DELETE")[0]
            if status not in (200, 404):
                raise FuzzFinding(f"DELETE answered {status}")
    rig.after(f"SSE steps {steps}")
