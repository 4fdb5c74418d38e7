#!/usr/bin/env python3
"""Benchmark mcp-docker over stdio against floors measured in the same run.

Run from anywhere (needs a running Docker/Podman engine and the local image
``mcp-docker-test/busybox:1``; nothing is pulled, the only network traffic is to the local
engine socket or whatever ``DOCKER_HOST`` names)::

    python3 bench/bench.py [--runs 10] [--iterations 200] [--warmup 20] [--json PATH] [--no-sdk]

It prints one table and writes the same figures as JSON (default ``bench/results.json``). Every
figure stands next to a *floor* -- the cost of the same work without mcp-docker -- measured in the
same run, and the ratio value/floor:

1. **Cold start** -- wall time from spawning ``python3 mcp_docker.py serve`` (stdin/stdout pipes)
   until the answer to a raw ``initialize`` request has been read, median of ``--runs``.
   Floor: spawning ``python3 -c "import mcp.server.lowlevel"`` until the import has finished
   (the child prints one line after the import; we stop the clock when that line is read), so
   that neither side pays for interpreter teardown. The literal command's wall time to exit
   (which does include teardown) and a bare ``python3 -c pass`` are reported as context.
   Value and floor runs are interleaved, after one discarded warm-up of each.

2. **Tool latency** -- median and p90 of ``tools/call`` for ``docker_list_containers`` (20 running
   containers, filtered by their unique name prefix so the answer is exactly those 20) and for
   ``docker_version``, sent as raw newline-delimited JSON-RPC over the pipes of one long-lived
   server (after ``initialize`` + ``notifications/initialized``). The clock runs from writing the
   request line to reading the response line; parsing and checking the response happen after
   the clock stops. Floor: the same engine request made directly with docker-py
   (``docker.APIClient(version="auto").containers(filters={"name": [prefix]})`` and
   ``.version()``), which is what the server does internally. Unless ``--no-sdk`` is given, the
   same calls are also made through the SDK's ``mcp.Client`` (stdio, initialize handshake) to show
   what a real Python client adds. Raw, SDK and direct calls are interleaved per iteration (order
   rotating) after ``--warmup`` calls of each, so engine drift affects all of them alike.

The 20 containers are ``busybox sleep 3600`` with ``--network none``, named
``mcpbench-<random>-N`` and labelled ``mcpbench.run=<random>``; they are force-removed in a
``finally`` block (also on errors, Ctrl-C and SIGTERM). Every response is checked (not an error,
20 containers with the prefix / a version string), so a broken server cannot look fast.

Percentiles: median is ``statistics.median``; p90 is the nearest-rank 90th percentile. Uses only
the standard library, ``docker`` and ``mcp``. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import inspect
import json
import math
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "mcp_docker.py"
IMAGE = "mcp-docker-test/busybox:1"
CONTAINERS = 20
PROTOCOL_VERSION = "2025-11-25"
INITIALIZE: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                         "clientInfo": {"name": "bench", "version": "0"}}}
IMPORT_FLOOR_CODE = "import sys, mcp.server.lowlevel; sys.stdout.write('ready\\n'); sys.stdout.flush()"
TIMEOUT = 30.0  # seconds any single step may take before the benchmark gives up


class BenchError(RuntimeError):
    """The benchmark could not measure something, or a response was wrong."""


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize_ns(samples_ns: list[int]) -> dict[str, Any]:
    """Nanosecond samples -> a summary in milliseconds (samples kept for later analysis)."""
    ms = [s / 1e6 for s in samples_ns]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
            "mean_ms": statistics.fmean(ms), "min_ms": min(ms), "max_ms": max(ms),
            "samples_ms": [round(v, 4) for v in ms]}


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
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line, self.buffer = self.buffer[:newline + 1], self.buffer[newline + 1:]
                return line
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise BenchError(f"no complete line from the child within {timeout:.0f}s")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise BenchError("the child closed its stdout")
            self.buffer += chunk

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


def spawn_server(stderr: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SERVER), "serve"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, bufsize=0)


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

    def __init__(self) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server; closed in close()
        self.proc = spawn_server(self.stderr)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin_fd = self.proc.stdin.fileno()
        self.reader = LineReader(self.proc.stdout.fileno())
        self.next_id = 1

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


def cold_start_once() -> int:
    """ns from spawning the server to reading its answer to ``initialize``."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter_ns()
        proc = spawn_server(stderr)
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


def import_floor_once() -> int:
    """ns from spawning ``python3 -c 'import mcp.server.lowlevel'`` to the import being done."""
    started = time.perf_counter_ns()
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_FLOOR_CODE], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, bufsize=0)
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout.fileno())
        try:
            line = reader.readline()
            elapsed = time.perf_counter_ns() - started
        finally:
            reader.close()
        if line != b"ready\n":
            raise BenchError(f"import floor printed {line!r}")
        return elapsed
    finally:
        stop_process(proc)


def wall_time_of(argv: list[str]) -> int:
    """ns from spawning ``argv`` until it has exited (checked for success)."""
    started = time.perf_counter_ns()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=TIMEOUT)
    return time.perf_counter_ns() - started


def bench_cold_start(runs: int) -> dict[str, Any]:
    literal = [sys.executable, "-c", "import mcp.server.lowlevel"]
    bare = [sys.executable, "-c", "pass"]
    cold_start_once(), import_floor_once(), wall_time_of(literal)  # warm the page cache and .pyc files
    value, floor, literal_ns, bare_ns = [], [], [], []
    for _ in range(runs):
        value.append(cold_start_once())
        floor.append(import_floor_once())
        literal_ns.append(wall_time_of(literal))
        bare_ns.append(wall_time_of(bare))
    return {"value": summarize_ns(value), "floor": summarize_ns(floor),
            "context": {"import_mcp_lowlevel_to_exit": summarize_ns(literal_ns),
                        "bare_python_startup": summarize_ns(bare_ns)}}


# ---------------------------------------------------------------------------------------------
# 2. Containers for the listing benchmark
# ---------------------------------------------------------------------------------------------


class BenchContainers:
    """Creates N sleeping containers; removes them (and anything with the run label) on exit."""

    def __init__(self, api: Any, count: int):
        self.api = api
        self.count = count
        self.run_id = uuid.uuid4().hex[:10]
        self.prefix = f"mcpbench-{self.run_id}-"
        self.label = f"mcpbench.run={self.run_id}"
        self.ids: list[str] = []

    def __enter__(self) -> BenchContainers:
        try:
            host_config = self.api.create_host_config(network_mode="none")
            for number in range(self.count):
                created = self.api.create_container(
                    IMAGE, command=["sleep", "3600"], name=f"{self.prefix}{number}", host_config=host_config,
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
# 2. Tool latency: raw JSON-RPC, the SDK client, and docker-py directly
# ---------------------------------------------------------------------------------------------


def check_list(structured: Any, prefix: str, where: str) -> None:
    rows = (structured or {}).get("containers") or []
    names = sorted(r.get("name", "") for r in rows)
    if len(rows) != CONTAINERS or not all(n.startswith(prefix) for n in names):
        raise BenchError(f"{where}: expected {CONTAINERS} containers named {prefix}*, got {names[:5]}...")


def check_version(structured: Any, where: str) -> None:
    if not (structured or {}).get("version") or not structured.get("api_version"):
        raise BenchError(f"{where}: no version in {str(structured)[:200]}")


def check_tool_result(result: dict[str, Any], where: str) -> dict[str, Any]:
    if result.get("isError"):
        raise BenchError(f"{where}: tool error {result.get('structuredContent') or result.get('content')}")
    return result.get("structuredContent") or {}


class SDKClient:
    """The same calls through ``mcp.Client`` over stdio (handshake era), its own server process."""

    def __init__(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __aexit__
        self.client: Any = None

    async def __aenter__(self) -> SDKClient:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=sys.executable, args=[str(SERVER), "serve"], cwd=str(REPO),
                                       env=dict(os.environ))
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


async def bench_latency(api: Any, prefix: str, warmup: int, iterations: int, use_sdk: bool) -> dict[str, Any]:
    list_args = {"name": prefix}
    list_filters = {"name": [prefix]}

    def raw_step(tool: str, arguments: dict[str, Any], check: Callable[[Any], None]) -> Callable[[], int]:
        def step() -> int:
            elapsed, result = raw.call_tool(tool, arguments)
            check(check_tool_result(result, f"raw {tool}"))
            return elapsed
        return step

    def sdk_step(tool: str, arguments: dict[str, Any], check: Callable[[Any], None]) -> Callable[[], Any]:
        async def step() -> int:
            elapsed, structured = await sdk.call_tool(tool, arguments)
            check(structured)
            return elapsed
        return step

    def direct_list() -> int:
        started = time.perf_counter_ns()
        rows = api.containers(all=False, filters=list_filters)  # what docker_list_containers sends
        elapsed = time.perf_counter_ns() - started
        check_list({"containers": [{"name": (r.get("Names") or [""])[0].lstrip("/")} for r in rows]},
                   prefix, "docker-py containers()")
        return elapsed

    def direct_version() -> int:
        started = time.perf_counter_ns()
        answer = api.version()
        elapsed = time.perf_counter_ns() - started
        check_version({"version": answer.get("Version"), "api_version": answer.get("ApiVersion")},
                      "docker-py version()")
        return elapsed

    def check_l(where: str) -> Callable[[Any], None]:
        return lambda structured: check_list(structured, prefix, where)

    def check_v(where: str) -> Callable[[Any], None]:
        return lambda structured: check_version(structured, where)

    raw = RawMCPClient()
    results: dict[str, Any] = {}
    try:
        try:
            raw.initialize()
        except BenchError as error:
            raise BenchError(f"{error}; server stderr: {stderr_tail(raw.stderr)}") from None
        async with contextlib.AsyncExitStack() as stack:
            sdk: Any = await stack.enter_async_context(SDKClient()) if use_sdk else None
            for tool, arguments, direct, checker in (
                    ("docker_list_containers", list_args, direct_list, check_l),
                    ("docker_version", {}, direct_version, check_v)):
                steps: dict[str, Callable[[], Any]] = {
                    "raw": raw_step(tool, arguments, checker(f"raw {tool}")), "direct": direct}
                if use_sdk:
                    steps["sdk"] = sdk_step(tool, arguments, checker(f"SDK {tool}"))
                samples = await run_interleaved(steps, warmup, iterations)
                results[tool] = {name: summarize_ns(values) for name, values in samples.items()}
    finally:
        raw.close()
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def row(metric: str, value_ms: float, floor_ms: float, floor_name: str) -> dict[str, Any]:
    return {"metric": metric, "value_ms": round(value_ms, 3), "floor": floor_name,
            "floor_ms": round(floor_ms, 3), "overhead_ms": round(value_ms - floor_ms, 3),
            "ratio": round(value_ms / floor_ms, 3) if floor_ms else None}


def build_rows(cold: dict[str, Any], latency: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [row("cold start: spawn -> initialize answer (median)", cold["value"]["median_ms"],
                cold["floor"]["median_ms"], "spawn -> `import mcp.server.lowlevel` done")]
    labels = {"docker_list_containers": ("list_containers (20)", "docker-py containers()"),
              "docker_version": ("version", "docker-py version()")}
    for tool, (short, floor_name) in labels.items():
        data = latency[tool]
        for client, client_name in (("raw", "raw JSON-RPC"), ("sdk", "mcp.Client")):
            if client not in data:
                continue
            for stat in ("median", "p90"):
                rows.append(row(f"{short} via {client_name} ({stat})", data[client][f"{stat}_ms"],
                                data["direct"][f"{stat}_ms"], f"{floor_name} ({stat})"))
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "mcp-docker ms", "floor ms", "ratio", "overhead ms", "floor")
    body = [(r["metric"], f"{r['value_ms']:.2f}", f"{r['floor_ms']:.2f}", f"{r['ratio']:.2f}x",
             f"{r['overhead_ms']:+.2f}", r["floor"]) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {1, 2, 3, 4}

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(line)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


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


def count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=count(1), default=10, help="cold-start runs (default 10)")
    parser.add_argument("--iterations", type=count(1), default=200, help="timed tool calls per client (default 200)")
    parser.add_argument("--warmup", type=count(0), default=20, help="discarded calls per client first (default 20)")
    parser.add_argument("--json", default=str(REPO / "bench" / "results.json"), metavar="PATH",
                        help="where to write the JSON results (default bench/results.json)")
    parser.add_argument("--no-sdk", dest="sdk", action="store_false", help="skip the mcp.Client measurement")
    return parser.parse_args(argv)


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the finally blocks, so the containers are removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    import docker
    from docker.utils import kwargs_from_env

    started = time.monotonic()
    try:
        api = docker.APIClient(version="auto", **kwargs_from_env())  # the same client the server makes
        api.inspect_image(IMAGE)
        env = environment(api)
        print(f"mcp-docker benchmark: python {env['python']}, mcp {env['mcp']}, docker-py {env['docker_py']}, "
              f"engine {env['engine']}, {env['cpus']} CPUs", file=sys.stderr)
        print(f"[1/2] cold start, {args.runs} runs each ...", file=sys.stderr)
        cold = bench_cold_start(args.runs)
        print(f"[2/2] tool latency, {CONTAINERS} containers, {args.warmup} warm-up + {args.iterations} "
              f"calls per client ...", file=sys.stderr)
        with BenchContainers(api, CONTAINERS) as containers:
            latency = asyncio.run(bench_latency(api, containers.prefix, args.warmup, args.iterations, args.sdk))
    except KeyboardInterrupt:
        print("interrupted (any benchmark containers were removed)", file=sys.stderr)
        return 130
    except (BenchError, docker.errors.DockerException, subprocess.SubprocessError, OSError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1

    rows = build_rows(cold, latency)
    context = cold["context"]
    print()
    print(render_table(rows))
    print()
    print(f"context: `python3 -c 'import mcp.server.lowlevel'` to exit (incl. teardown): "
          f"{context['import_mcp_lowlevel_to_exit']['median_ms']:.1f} ms median; "
          f"bare `python3 -c pass`: {context['bare_python_startup']['median_ms']:.1f} ms median")
    print(f"cold start {args.runs} runs; latency {args.iterations} calls per client after {args.warmup} "
          f"warm-up, interleaved; ratio = mcp-docker / floor; total {time.monotonic() - started:.0f} s")

    report = {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"runs": args.runs, "iterations": args.iterations, "warmup": args.warmup,
                     "containers": CONTAINERS, "image": IMAGE, "protocol_version": PROTOCOL_VERSION,
                     "sdk": args.sdk},
        "environment": env,
        "table": rows,
        "cold_start": cold,
        "latency": latency,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
