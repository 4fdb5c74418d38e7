#!/usr/bin/env python3
"""The long fuzz run of mcp-docker's HTTP layer and JSON-RPC handling (issue 9).

    python3 bench/fuzz.py [--inputs 100000] [--seed 1] [--properties http,jsonrpc,sse]
                          [--full-probe-every N] [--parallel]

Runs the same hypothesis strategies and checks as the ``test_fuzz_*`` tests in test_mcp_docker.py (both take
them from fuzzrig.py, beside the suite), with many more inputs: the server runs in this process (HttpServer
on its own event loop), every input goes over
a real loopback socket, and after each one the server must have logged no error, be back at its baseline
(asyncio tasks, connections, sessions, SSE stream slots, tool-call slots, calls in flight) and still serve
a valid client (/healthz, a session, a ping, a DELETE; every ``--full-probe-every``-th input also a
``docker_version`` tool call answered by the engine). Replies must
carry no 5xx (but a 503 with Retry-After), no invalid JSON, no stack trace, source path or engine socket.

``--inputs`` is split over the properties (45% raw HTTP, 45% JSON-RPC, 10% SSE reconnect sequences, each
of those several requests). Needs the test extra (pytest, hypothesis) and a running engine
(``DOCKER_HOST`` or ``MCP_DOCKER_TEST_HOST``); it creates no engine objects. Prints a summary; exit 1 on any
finding (the first failing input of each property is printed), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import hypothesis  # noqa: E402

import fuzzrig  # noqa: E402

SHARES = {"http": 0.45, "jsonrpc": 0.45, "sse": 0.10}


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_property(name: str, rig: fuzzrig.FuzzRig, examples: int, seed: int) -> str | None:
    strategy, body = {"http": (fuzzrig.http_inputs(), fuzzrig.fuzz_http_input),
                      "jsonrpc": (fuzzrig.jsonrpc_inputs(), fuzzrig.fuzz_jsonrpc_input),
                      "sse": (fuzzrig.reconnect_inputs(), fuzzrig.fuzz_reconnects)}[name]
    started = time.monotonic()

    @hypothesis.seed(seed)
    @fuzzrig.fuzz_settings(examples, seed)
    @hypothesis.given(strategy)
    def run(case):
        body(rig, case)
        if rig.count % 1000 == 0:
            print(f"  {name}: {rig.count} inputs, {time.monotonic() - started:.0f}s, RSS {rss_kib()} KiB",
                  file=sys.stderr, flush=True)

    try:
        run()
    except Exception as exc:  # the finding, with hypothesis' note of the failing input
        notes = "\n".join(getattr(exc, "__notes__", []))
        return f"{type(exc).__name__}: {str(exc)[:3000]}\n{notes[:3000]}"
    return None


def run_in_parallel(args: argparse.Namespace, names: list[str], total_share: float) -> int:
    import subprocess

    started = time.monotonic()
    children = []
    for index, name in enumerate(names):
        examples = max(1, round(args.inputs * SHARES[name] / total_share))
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--properties", name, "--inputs", str(examples), "--seed",
             str(args.seed + index), "--full-probe-every", str(args.full_probe_every)],
            stdout=subprocess.PIPE, text=True))
    codes = []
    for child in children:
        output, _ = child.communicate()
        print(output, end="")
        codes.append(child.returncode)
    print(f"parallel run: {len(names)} processes, {time.monotonic() - started:.0f}s wall, exit codes {codes}")
    return 1 if any(codes) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in all (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (default 1)")
    parser.add_argument("--properties", default="http,jsonrpc,sse", help="comma list of http, jsonrpc, sse")
    parser.add_argument("--full-probe-every", type=int, default=10, metavar="N",
                        help="after every input: /healthz, a session, a ping, a DELETE; after every Nth also a "
                             "docker_version tool call through the engine. Leak and error checks: every input. "
                             "Default 10")
    parser.add_argument("--parallel", action="store_true",
                        help="run each property in its own process (each its own server) at the same time")
    args = parser.parse_args()
    names = [n for n in args.properties.split(",") if n]
    unknown = set(names) - set(SHARES)
    if unknown:
        parser.error(f"unknown properties: {', '.join(sorted(unknown))}")
    if not fuzzrig.engine_available():
        print("no container engine answers (DOCKER_HOST / MCP_DOCKER_TEST_HOST)", file=sys.stderr)
        return 2
    total_share = sum(SHARES[n] for n in names)
    if args.parallel and len(names) > 1:
        return run_in_parallel(args, names, total_share)
    directory = Path(tempfile.mkdtemp(prefix="mcpfuzz-"))
    findings: dict[str, str] = {}
    rows = []
    started = time.monotonic()
    rss_start = rss_kib()
    try:
        for index, name in enumerate(names):
            examples = max(1, round(args.inputs * SHARES[name] / total_share))
            rig = fuzzrig.FuzzRig(directory / name)
            rig.full_probe_every = max(1, args.full_probe_every)
            began = time.monotonic()
            try:
                finding = run_property(name, rig, examples, args.seed + index)
            finally:
                rig.close()
            if finding:
                findings[name] = finding
            rows.append((name, examples, rig.count, time.monotonic() - began, dict(sorted(rig.statuses.items()))))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"mcp-docker fuzz run: seed {args.seed}, {sum(r[2] for r in rows)} inputs in "
          f"{time.monotonic() - started:.0f}s, RSS {rss_start} -> {rss_kib()} KiB")
    for name, planned, ran, seconds, statuses in rows:
        print(f"  {name:8} {ran:7d}/{planned} inputs {seconds:8.1f}s  {'FINDING' if name in findings else 'ok'}  "
              f"statuses {statuses}")
    for name, finding in findings.items():
        print(f"\n--- finding in {name} ---\n{finding}")
    return 1 if findings else 0


if __name__ == "__main__":
    os.environ.setdefault("MCP_DOCKER_FUZZ_EXAMPLES", "1")
    sys.exit(main())
