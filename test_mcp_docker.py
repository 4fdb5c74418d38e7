"""Tests for mcp_docker.py.

Unit tests cover the pure parts (settings, policy, bounding, parsing). Integration tests start the
real server as a subprocess and drive it through the ``mcp`` SDK's client over stdio, against the
real container engine and the local test image ``mcp-docker-test/busybox:1`` (see ``.ci/run``).

Every engine object a test makes carries the per-run prefix ``PREFIX`` and the label
``TEST_LABEL``; a session fixture removes them all at the end, pass or fail.

Set ``MCP_DOCKER_REQUIRE_ENGINE=1`` to make a missing engine a failure instead of a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mcp_docker as md

HERE = Path(__file__).resolve().parent
SERVER = [sys.executable, str(HERE / "mcp_docker.py"), "serve"]
TEST_IMAGE = os.environ.get("MCP_DOCKER_TEST_IMAGE", "mcp-docker-test/busybox:1")
PREFIX = f"mcpt{secrets.token_hex(3)}"
TEST_LABEL = f"io.mcp-docker.test={PREFIX}"
REQUIRE_ENGINE = os.environ.get("MCP_DOCKER_REQUIRE_ENGINE") == "1"
# The engine the integration tests drive (the server gets it as DOCKER_HOST); default: docker-py's default.
TEST_HOST = os.environ.get("MCP_DOCKER_TEST_HOST", "")
ENGINE_URL = TEST_HOST or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
# Several real engines at once for the multi-engine tests, in --engine syntax, e.g.
# "docker=unix:///var/run/docker.sock,podman=unix:///tmp/podman.sock" (CI sets it).
TEST_ENGINES = os.environ.get("MCP_DOCKER_TEST_ENGINES", "")
ALL_TOOLS = {
    "docker_list_containers", "docker_inspect_container", "docker_container_logs", "docker_container_stats",
    "docker_container_top", "docker_container_diff", "docker_create_container", "docker_run_container",
    "docker_start_container", "docker_stop_container", "docker_restart_container", "docker_pause_container",
    "docker_unpause_container", "docker_kill_container", "docker_rename_container", "docker_exec_command",
    "docker_remove_container", "docker_prune_containers",
    "docker_list_images", "docker_inspect_image", "docker_image_history", "docker_pull_image",
    "docker_build_image", "docker_tag_image", "docker_push_image", "docker_remove_image", "docker_prune_images",
    "docker_list_networks", "docker_inspect_network", "docker_create_network", "docker_connect_container",
    "docker_disconnect_container", "docker_remove_network", "docker_prune_networks",
    "docker_list_volumes", "docker_inspect_volume", "docker_create_volume", "docker_remove_volume",
    "docker_prune_volumes",
    "docker_list_engines", "docker_version", "docker_system_info", "docker_disk_usage", "docker_events",
    "docker_prune_system",
}
DESTRUCTIVE = {"docker_remove_container", "docker_prune_containers", "docker_remove_image", "docker_prune_images",
               "docker_remove_network", "docker_prune_networks", "docker_remove_volume", "docker_prune_volumes",
               "docker_prune_system"}


# =============================================================================================
# Unit tests: pure logic
# =============================================================================================


def test_registry_has_exactly_the_catalogue():
    assert set(md.TOOLS) == ALL_TOOLS
    assert len(md.TOOLS) == 45
    assert {n for n, s in md.TOOLS.items() if s.tier is md.Tier.DESTRUCTIVE} == DESTRUCTIVE


def test_every_parameter_is_described_and_schemas_are_closed():
    for spec in md.TOOLS.values():
        schema = spec.input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False, spec.name
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{spec.name}.{name} has no description"
        assert set(schema.get("required", [])) <= set(schema["properties"]), spec.name
        assert spec.output_schema["type"] == "object", spec.name
        assert spec.title and spec.description, spec.name


def test_a_tool_cannot_register_without_a_tier():
    with pytest.raises(TypeError):
        md.tool("x_test", title="t", description="d", tier="safe", toolset="system", output=md.OUT_ACTION)
    with pytest.raises(TypeError):
        md.tool("x_test", title="t", description="d", tier=md.Tier.SAFE, toolset="system",
                params={"a": {"type": "string"}}, output=md.OUT_ACTION)


def test_annotations_follow_the_tier():
    assert md.tool_annotations(md.Tier.SAFE, idempotent=False, open_world=False) == {
        "readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}
    moderate = md.tool_annotations(md.Tier.MODERATE, idempotent=False, open_world=True)
    assert moderate["readOnlyHint"] is False and moderate["destructiveHint"] is False and moderate["openWorldHint"]
    assert md.tool_annotations(md.Tier.DESTRUCTIVE, idempotent=False, open_world=False)["destructiveHint"] is True


@pytest.mark.parametrize(("settings", "name", "expected"), [
    (md.Settings(), "docker_list_containers", None),
    (md.Settings(), "docker_remove_container", "SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS"),
    (md.Settings(allow_destructive=True), "docker_remove_container", None),
    (md.Settings(allow_moderate=False), "docker_start_container", "SAFETY_ALLOW_MODERATE_OPERATIONS"),
    (md.Settings(allow_moderate=False), "docker_version", None),
    (md.Settings(denied_tools=("docker_version",)), "docker_version", "SAFETY_DENIED_TOOLS"),
    (md.Settings(allowed_tools=("docker_version",)), "docker_list_images", "SAFETY_ALLOWED_TOOLS"),
    (md.Settings(allowed_tools=("docker_remove_image",)), "docker_remove_image", "SAFETY_ALLOW_DESTRUCTIVE"),
    (md.Settings(toolsets=("system",)), "docker_list_images", "MCP_TOOLSETS"),
    (md.Settings(toolsets=("system",)), "docker_version", None),
])
def test_tool_denial(settings, name, expected):
    spec = md.TOOLS[name]
    denial = md.tool_denial(name, spec.tier, spec.toolset, settings)
    if expected is None:
        assert denial is None
    else:
        assert denial is not None and expected in denial


def test_settings_precedence_flags_env_file():
    env_file = {"SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS": "true", "MCP_MAX_OUTPUT_BYTES": "1000",
                "MCP_TOOLSETS": "system"}
    environ = {"MCP_MAX_OUTPUT_BYTES": "2000", "PATH": "/bin"}
    settings = md.load_settings({"toolsets": "images,system"}, environ, env_file)
    assert settings.allow_destructive is True
    assert settings.max_output_bytes == 2000
    assert settings.toolsets == ("images", "system")
    assert md.load_settings({}, {}, {}) == md.Settings()
    assert md.load_settings({"allow_destructive": False}, {"SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS": "1"}).allow_destructive is False


@pytest.mark.parametrize(("cli", "environ", "env_file", "message"), [
    ({}, {"SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS": "maybe"}, {}, "expected true or false"),
    ({}, {}, {"SAFETY_ALLOW_DESTRUCTIVE_OPERATION": "true"}, "unknown setting"),
    ({}, {"SAFETY_ALOW_MODERATE_OPERATIONS": "false"}, {}, "unknown setting"),
    ({"toolsets": "containers,kubernetes"}, {}, {}, "unknown toolset"),
    ({"max_output_bytes": "-5"}, {}, {}, "outside"),
    ({"engine_timeout": "soon"}, {}, {}, "number of seconds"),
    ({"docker_host": "/var/run/docker.sock"}, {}, {}, "unix://"),
    ({"denied_tools": "docker_version,rm -rf"}, {}, {}, "not a valid name"),
])
def test_bad_settings_are_clear_errors(cli, environ, env_file, message):
    with pytest.raises(md.ConfigError, match=message):
        md.load_settings(cli, environ, env_file)


def test_parse_env_file():
    text = "# comment\n\nexport SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS=true\nMCP_TOOLSETS='system,images'\nDOCKER_HOST=\"unix:///x\"\n"
    assert md.parse_env_file(text) == {"SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS": "true",
                                       "MCP_TOOLSETS": "system,images", "DOCKER_HOST": "unix:///x"}
    with pytest.raises(md.ConfigError, match="line 1"):
        md.parse_env_file("not a setting")


def test_bound_result_keeps_newest_log_lines():
    lines = [f"line {i:05d} " + "x" * 50 for i in range(5000)]
    result = md.bound_result({"lines": lines, "count": 5000}, 4096, "lines", keep_newest=True)
    assert result["truncated"] is True
    assert result["lines"][-1] == lines[-1]
    assert len(json.dumps(result, separators=(",", ":"))) <= 4096
    assert len(result["lines"]) > 10


def test_bound_result_keeps_first_items_of_lists_and_cuts_big_strings():
    result = md.bound_result({"containers": [{"n": i} for i in range(10000)]}, 2000, "containers")
    assert result["containers"][0] == {"n": 0} and result["truncated"] is True
    big = md.bound_result({"value": "y" * 100000}, 10000)
    assert big["truncated"] is True and len(json.dumps(big)) <= 10000
    small = {"a": 1}
    assert md.bound_result(small, 100) is small


def test_sanitize_engine_text_hides_host_details():
    text = md.sanitize_engine_text("Cannot connect to unix:///run/user/1000/docker.sock: open /home/alice/x: "
                                   "denied from 10.1.2.3:2376 " + "z" * 500)
    assert "/home" not in text and "docker.sock" not in text and "10.1.2.3" not in text
    assert len(text) <= 240


def test_translate_engine_errors():
    import docker.errors
    import requests

    def api_error(status: int, explanation: str) -> Exception:
        response = requests.Response()
        response.status_code = status
        return docker.errors.APIError("x", response=response, explanation=explanation)

    assert md.translate_engine_error(api_error(404, "No such container: a")).category == "not_found"
    assert md.translate_engine_error(api_error(409, "name in use")).category == "conflict"
    assert md.translate_engine_error(api_error(400, "bad")).category == "invalid_argument"
    assert md.translate_engine_error(api_error(500, "mkdir /var/lib/docker/x: permission denied")).category == "permission"
    err = md.translate_engine_error(api_error(500, "failed in /var/lib/docker/overlay2/abc"))
    assert err.category == "engine_error" and "/var/lib" not in err.message
    assert md.translate_engine_error(requests.exceptions.ConnectionError("unix:///x.sock")).category == "engine_unavailable"
    assert md.translate_engine_error(requests.exceptions.ReadTimeout()).category == "timeout"
    assert md.translate_engine_error(docker.errors.DockerException(
        "Error while fetching server API version: ('Connection aborted.')")).category == "engine_unavailable"
    assert md.translate_engine_error(KeyError("boom")).category == "internal"


def test_redaction_and_parsers():
    assert md.redact_environment(["PATH=/bin", "DB_PASSWORD=hunter2", "API_TOKEN=abc", "EMPTY_SECRET="]) == [
        "PATH=/bin", "DB_PASSWORD=<redacted>", "API_TOKEN=<redacted>", "EMPTY_SECRET="]
    assert md.split_image_reference("alpine") == ("alpine", "latest")
    assert md.split_image_reference("localhost:5000/team/app:1.2") == ("localhost:5000/team/app", "1.2")
    assert md.split_image_reference("localhost:5000/app") == ("localhost:5000/app", "latest")
    assert md.split_image_reference("app@sha256:abc") == ("app", "sha256:abc")
    assert md.parse_memory("256m") == 256 * 1024**2
    assert md.parse_memory("1g") == 1024**3
    assert md.parse_memory(1000) == 1000
    with pytest.raises(md.ToolError):
        md.parse_memory("lots")
    assert md.format_ports([{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                            {"PrivatePort": 53, "Type": "udp"}]) == ["127.0.0.1:8080->80/tcp", "53/udp"]
    assert md.engine_filters({"all": True, "label": ["a=b"], "name": "", "x": None},
                             {"all": "all", "label": "label", "name": "name", "x": "x"}) == {
        "all": ["true"], "label": ["a=b"]}
    assert md.decode_log_lines(b"a\r\nb\n\xff\n") == ["a", "b", "\ufffd"]
    assert md.cpu_percent({"cpu_stats": {"cpu_usage": {"total_usage": 200}, "system_cpu_usage": 2000,
                                         "online_cpus": 2},
                           "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000}}) == 20.0


def test_validation_messages_are_short_and_specific():
    app = md.DockerMCP(md.Settings())
    spec = md.TOOLS["docker_container_logs"]
    cases = [
        ({}, "missing required argument 'container'"),
        ({"container": "a", "tail": "ten"}, "argument 'tail' must be of type integer"),
        ({"container": "a", "bogus": 1}, "unknown argument 'bogus'"),
        ({"container": "a" * 100000}, "longer than 128"),
        ({"container": "../../etc"}, "not allowed"),
        ({"container": "a", "tail": 0}, "at least 1"),
    ]
    for args, message in cases:
        with pytest.raises(md.ToolError) as info:
            app.validate(spec, args)
        assert info.value.category == "invalid_argument"
        assert message in info.value.message
        assert len(info.value.message) < 300
    with pytest.raises(md.ToolError):
        app.validate(spec, ["not", "an", "object"])


# -- engines: URLs, named engines, discovery, ceilings (pure) ------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    ("unix:///var/run/docker.sock", None), ("tcp://10.0.0.5:2376", None), ("tcp://[::1]:2375", None),
    ("ssh://ops@build-1.example.com", None), ("ssh://host:2222", None), ("https://engine.example:2376", None),
    ("/var/run/docker.sock", "unix://"), ("tcp://host", "tcp://host:port"), ("ssh://u@h/run/podman.sock", "no path"),
    ("unix://relative.sock", "absolute"), ("ftp://x:1", "unix://"), ("tcp://h:2376;rm", "tcp://host:port"),
])
def test_engine_url_problem(url, problem):
    found = md.engine_url_problem(url)
    assert (found is None) if problem is None else (problem in found)


def test_engine_specs_parse():
    engines = md.load_settings({"engines": ("local=unix:///var/run/docker.sock",
                                            "prod=tcp://10.0.0.5:2376;read-only;cert-path=/etc/mcp/prod/",
                                            "build=ssh://ci@build;no-destructive")}).engines
    assert engines == (md.EngineConfig("local", "unix:///var/run/docker.sock"),
                       md.EngineConfig("prod", "tcp://10.0.0.5:2376", "read-only", "/etc/mcp/prod"),
                       md.EngineConfig("build", "ssh://ci@build", "no-destructive"))
    from_env = md.load_settings({}, {"MCP_ENGINES": "a=unix:///a.sock, b=unix:///b.sock;readonly"}).engines
    assert [(e.name, e.access) for e in from_env] == [("a", "full"), ("b", "read-only")]
    # flags win over the environment, which wins over the env file
    assert md.load_settings({"engines": ("x=unix:///x.sock",)}, {"MCP_ENGINES": "y=unix:///y.sock"}).engines[0].name == "x"
    assert md.load_settings({}, {}, {"MCP_ENGINES": "z=unix:///z.sock"}).engines[0].name == "z"
    assert md.load_settings({}, {}).engines == ()


@pytest.mark.parametrize(("spec", "message"), [
    ("noequals", "NAME=URL"), ("bad name=unix:///x", "NAME=URL"), ("a=/var/run/docker.sock", "engine 'a'"),
    ("a=tcp://h", "tcp://host:port"), ("a=unix:///x;admin", "unknown option"), ("a=unix:///x;cert-path=rel", "absolute"),
    ("a=unix:///x;cert-path=/c", "tcp://"), ("a=unix:///x;read-only;no-destructive", "choose one"),
    ("a=unix:///x,a=unix:///y", "named twice"),
])
def test_bad_engine_specs_are_clear_errors(spec, message):
    with pytest.raises(md.ConfigError, match=message):
        md.load_settings({"engines": (spec,)})
    with pytest.raises(md.ConfigError, match="MCP_ENGINES"):
        md.load_settings({}, {"MCP_ENGINES": spec})


def _discover(environ, files=(), texts=None, docker_host=""):
    texts = texts or {}
    return md.discover_engine(docker_host, environ, lambda p: p in files or p in texts, texts.get)


def test_discovery_order():
    everything = {"/var/run/docker.sock", "/run/user/1000/podman/podman.sock", "/run/podman/podman.sock"}
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert _discover(env, everything, docker_host="tcp://h:1").url == "tcp://h:1"
    assert _discover({**env, "DOCKER_HOST": "tcp://h:1"}, docker_host="tcp://h:1").source == "DOCKER_HOST"
    assert _discover({**env, "CONTAINER_HOST": "unix:///c.sock"}, everything).source == "CONTAINER_HOST"
    podman_ssh = _discover({**env, "CONTAINER_HOST": "ssh://u@h/run/podman/podman.sock"}, everything)
    assert podman_ssh.url == "unix:///var/run/docker.sock" and "ignored" in " ".join(podman_ssh.steps)
    assert _discover(env, everything).source == "Docker socket"
    rootless = _discover(env, everything - {"/var/run/docker.sock"})
    assert rootless.url == "unix:///run/user/1000/podman/podman.sock" and rootless.source == "rootless Podman socket"
    assert _discover(env, {"/run/podman/podman.sock"}).source == "Podman socket"
    nothing = _discover(env)
    assert nothing.url == "unix:///var/run/docker.sock" and nothing.source == "default" and len(nothing.steps) == 7
    assert all("/" not in d.source for d in (rootless, nothing))  # sources are shown to clients: no paths


def test_discovery_reads_the_current_docker_context():
    import hashlib

    digest = hashlib.sha256(b"remote").hexdigest()
    meta = json.dumps({"Name": "remote", "Endpoints": {"docker": {"Host": "tcp://10.1.1.1:2376",
                                                                  "SkipTLSVerify": False}}})
    texts = {"/home/u/.docker/config.json": json.dumps({"currentContext": "remote"}),
             f"/home/u/.docker/contexts/meta/{digest}/meta.json": meta}
    tls = f"/home/u/.docker/contexts/tls/{digest}/docker"
    found = _discover({"HOME": "/home/u"}, {"/var/run/docker.sock", f"{tls}/cert.pem"}, texts)
    assert (found.url, found.source, found.cert_path, found.tls_verify) == (
        "tcp://10.1.1.1:2376", "docker context 'remote'", tls, True)
    # DOCKER_CONTEXT wins over config.json; "default" means the sockets; a missing context is skipped
    assert _discover({"HOME": "/home/u", "DOCKER_CONTEXT": "default"}, {"/var/run/docker.sock"}, texts).source \
        == "Docker socket"
    missing = _discover({"HOME": "/home/u", "DOCKER_CONTEXT": "gone"}, {"/var/run/docker.sock"}, texts)
    assert missing.source == "Docker socket" and "'gone': not found" in " ".join(missing.steps)
    assert _discover({"DOCKER_CONFIG": "/home/u/.docker"}, (), texts).url == "tcp://10.1.1.1:2376"


def test_engine_ceilings():
    assert md.engine_denial("docker_version", md.Tier.SAFE, "prod", "read-only") is None
    assert "read-only" in md.engine_denial("docker_run_container", md.Tier.MODERATE, "prod", "read-only")
    assert md.engine_denial("docker_run_container", md.Tier.MODERATE, "ci", "no-destructive") is None
    assert "destructive" in md.engine_denial("docker_remove_image", md.Tier.DESTRUCTIVE, "ci", "no-destructive")
    assert md.engine_denial("docker_version", md.Tier.SAFE, "x", "admin") is not None  # unknown: closed
    only_read = md.Settings(allow_destructive=True, engines=(md.EngineConfig("a", "unix:///a", "read-only"),
                                                             md.EngineConfig("b", "unix:///b", "no-destructive")))
    spec = md.TOOLS["docker_remove_container"]
    assert "every configured engine" in md.tool_denial(spec.name, spec.tier, spec.toolset, only_read)
    spec = md.TOOLS["docker_start_container"]
    assert md.tool_denial(spec.name, spec.tier, spec.toolset, only_read) is None


def test_podman_answers_translate_like_docker():
    import docker.errors
    import requests

    def api_error(status: int, explanation: str) -> Exception:
        response = requests.Response()
        response.status_code = status
        return docker.errors.APIError("x", response=response, explanation=explanation)

    cases = {
        "x not found: layer not known": "not_found",
        'cannot remove container 5d4 as it is running - running or paused containers cannot be removed without '
        'force: container state improper': "conflict",
        '"n" has associated containers with it. Use -f to forcibly delete containers and pods: network is being used':
            "conflict",
        "network name n already used: network already exists": "conflict",
        'the container name "c" is already in use by 5d4. You have to remove that container to be able to reuse '
        "that name: that name is already in use": "conflict",
        "unsupported driver host: invalid argument": "invalid_argument",
        "something else broke": "engine_error",
    }
    for explanation, category in cases.items():
        assert md.translate_engine_error(api_error(500, explanation)).category == category, explanation
    assert md.translate_engine_error(api_error(403, "network n id 1 has active endpoints")).category == "conflict"
    assert md.translate_engine_error(requests.exceptions.SSLError("bad cert")).category == "engine_unavailable"
    assert "paramiko" in md.translate_engine_error(docker.errors.DockerException(
        "Install paramiko package to enable ssh:// support")).message


def test_podman_names_and_reports():
    assert md.familiar_image("localhost/mcp-docker-test/busybox:1", "podman") == "mcp-docker-test/busybox:1"
    assert md.familiar_image("docker.io/library/alpine:3", "podman") == "alpine:3"
    assert md.familiar_image("docker.io/team/app:1", "podman") == "team/app:1"
    assert md.familiar_image("localhost:5000/app:1", "podman") == "localhost:5000/app:1"
    assert md.familiar_image("localhost/app:1", "docker") == "localhost/app:1"  # a registry named localhost
    assert md.prune_result({"ImagesDeleted": [{"Untagged": "docker.io/library/x:1"}, {"Deleted": "sha256:" + "a" * 64}]},
                           "ImagesDeleted", "podman")["deleted"] == ["x:1", "a" * 12]
    assert md.reference_matches("busybox", "busybox:1") and not md.reference_matches("busybox", "team/busybox:1")
    assert md.reference_matches("team/*", "team/busybox:1") and not md.reference_matches("*", "team/busybox:1")
    assert md.docker_security_opt("no-new-privileges") == "no-new-privileges:true"
    podman_version = {"Components": [{"Name": "Podman Engine"}, {"Name": "Conmon"}], "Version": "4.3.1"}
    assert md.engine_kind(podman_version) == "podman" and md.engine_kind({"Components": [{"Name": "Engine"}]}) == "docker"
    assert md.engine_rootless({"Rootless": True}) and md.engine_rootless({"SecurityOptions": ["name=rootless"]})
    assert not md.engine_rootless({"SecurityOptions": ["name=seccomp,profile=default"], "Rootless": False})
    assert md.cpu_percent({}) is None


def test_engine_argument_is_offered_everywhere_but_the_engine_list():
    for spec in md.TOOLS.values():
        assert ("engine" in spec.input_schema["properties"]) is (spec.name != "docker_list_engines"), spec.name
    app = md.DockerMCP(md.Settings(engines=(md.EngineConfig("a", "unix:///a"), md.EngineConfig("b", "unix:///b"))))
    assert app.listed_schema(md.TOOLS["docker_version"])["properties"]["engine"]["enum"] == ["a", "b"]
    assert "enum" not in md.TOOLS["docker_version"].input_schema["properties"]["engine"]  # registry untouched
    assert "enum" not in md.DockerMCP(md.Settings()).listed_schema(md.TOOLS["docker_version"])["properties"]["engine"]
    with pytest.raises(md.ToolError, match="unknown engine 'c'; configured: a, b"):
        app.engines.select("c")


def test_probing_engines_reports_a_slow_one_without_waiting_for_it():
    release = threading.Event()

    class Stuck(md.Engine):
        def api(self):
            release.wait(30)
            raise md.ToolError("engine_unavailable", "gone")

    settings = md.Settings(engines=(md.EngineConfig("stuck", "unix:///nonexistent/x.sock"),))
    try:
        rows = md.probe_engines([Stuck(settings, settings.engines[0])], timeout=0.2)
    finally:
        release.set()
    assert rows[0]["reachable"] is False and rows[0]["error"].startswith("timeout:")
    assert rows[0]["transport"] == "unix" and "nonexistent" not in json.dumps(rows)


# =============================================================================================
# Integration harness: the real server over stdio, driven by the SDK client
# =============================================================================================


def engine_client(url: str | None = None):
    import docker

    url = url or TEST_HOST
    return docker.APIClient(version="auto", timeout=30, **({"base_url": url} if url else {}))


def engine_urls_under_test() -> list[str]:
    """Every engine the tests may touch: the one under test and the multi-engine ones."""
    named = [e.url for e in md.load_settings({}, {"MCP_ENGINES": TEST_ENGINES}).engines] if TEST_ENGINES else []
    return list(dict.fromkeys([ENGINE_URL, *named]))


def engine_available() -> bool:
    try:
        engine_client().ping()
        return True
    except Exception:
        return False


_ENGINE_UP = None


def require_engine():
    global _ENGINE_UP
    if _ENGINE_UP is None:
        _ENGINE_UP = engine_available()
    if not _ENGINE_UP:
        if REQUIRE_ENGINE:
            pytest.fail("MCP_DOCKER_REQUIRE_ENGINE=1 but no container engine answers")
        pytest.skip("no container engine (set MCP_DOCKER_REQUIRE_ENGINE=1 to fail instead)")


class Harness:
    """One server subprocess and one SDK client session, kept open on a background event loop."""

    def __init__(self, args: list[str] | None = None, mode: str = "legacy", env: dict[str, str] | None = None):
        from mcp import StdioServerParameters

        self.params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], *(args or [])],
                                            env={**os.environ, "MCP_LOG_LEVEL": "DEBUG",
                                                 **({"DOCKER_HOST": TEST_HOST} if TEST_HOST else {}), **(env or {})})
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop: asyncio.Event | None = None
        self.client: Any = None
        ready = self.submit(self._open_start())
        self._host = ready

    async def _open_start(self) -> None:
        started = asyncio.get_running_loop().create_future()
        self._host_task = asyncio.ensure_future(self._host_session(started))
        await started

    async def _host_session(self, started: asyncio.Future) -> None:
        from mcp import Client

        self._stop = asyncio.Event()
        try:
            async with Client(self.params, mode=self.mode, read_timeout_seconds=120) as client:
                self.client = client
                started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                raise

    def submit(self, coro: Any, timeout: float = 180) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return self.submit(self.client.call_tool(name, args or {}))

    def ok(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self.call(name, args)
        assert not result.is_error, f"{name} failed: {result.content[0].text}"
        assert json.loads(result.content[0].text) == result.structured_content
        return result.structured_content

    def error(self, name: str, args: dict[str, Any] | None = None, category: str | None = None) -> str:
        result = self.call(name, args)
        assert result.is_error, f"{name} unexpectedly succeeded: {result.content[0].text[:300]}"
        text = result.content[0].text
        if category:
            assert text.startswith(f"{category}:"), text
        return text

    def list_tools(self) -> Any:
        return self.submit(self.client.list_tools())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
                self.submit(asyncio.wait_for(asyncio.shield(self._host_task), 30))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def cleanup_test_objects() -> None:
    """Remove every engine object this run made (by name prefix or test label), on every engine used."""
    for url in engine_urls_under_test():
        try:
            cleanup_engine(engine_client(url))
        except Exception:
            continue


def cleanup_engine(api: Any) -> None:
    label_filter = {"label": [TEST_LABEL]}
    for c in api.containers(all=True):
        if any(n.lstrip("/").startswith(PREFIX) for n in c.get("Names") or []) or \
                (c.get("Labels") or {}).get("io.mcp-docker.test") == PREFIX:
            with contextlib.suppress(Exception):
                api.remove_container(c["Id"], force=True, v=True)
    for n in api.networks():
        if n["Name"].startswith(PREFIX):
            with contextlib.suppress(Exception):
                api.remove_network(n["Id"])
    for v in (api.volumes() or {}).get("Volumes") or []:
        if v["Name"].startswith(PREFIX):
            with contextlib.suppress(Exception):
                api.remove_volume(v["Name"], force=True)
    for image in api.images(filters=label_filter) + api.images():
        for tag in image.get("RepoTags") or []:
            if PREFIX in tag:
                with contextlib.suppress(Exception):
                    api.remove_image(tag, force=True)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_engine_objects():
    yield
    if _ENGINE_UP:
        cleanup_test_objects()


@pytest.fixture(scope="module")
def full():
    """A server with destructive operations enabled (45 tools)."""
    require_engine()
    harness = Harness(["--allow-destructive"])
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def default():
    """A server with the default configuration (destructive operations off)."""
    require_engine()
    harness = Harness()
    yield harness
    harness.close()


def sleeper(h: Harness, suffix: str, **extra: Any) -> str:
    """A running container that sleeps, named with the test prefix."""
    name = f"{PREFIX}-{suffix}"
    h.ok("docker_run_container", {"image": TEST_IMAGE, "name": name, "command": ["sleep", "3600"],
                                  "network": "none", "labels": {"io.mcp-docker.test": PREFIX}, **extra})
    return name


# =============================================================================================
# Integration: protocol, listing, gating
# =============================================================================================


def test_lists_45_tools_with_spec_annotations_when_destructive_enabled(full):
    tools = full.list_tools().tools
    assert {t.name for t in tools} == ALL_TOOLS
    for t in tools:
        wire = t.model_dump(by_alias=True, exclude_none=True)
        ann = wire["annotations"]
        assert set(ann) == {"title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
        assert ann["destructiveHint"] is (t.name in DESTRUCTIVE)
        assert wire["title"] and wire["outputSchema"]["type"] == "object"
        for prop in wire["inputSchema"]["properties"].values():
            assert prop["description"]


def test_default_config_hides_destructive_tools_and_refuses_them(default):
    names = {t.name for t in default.list_tools().tools}
    assert names == ALL_TOOLS - DESTRUCTIVE and len(names) == 36
    text = default.error("docker_remove_container", {"container": "whatever"}, "policy_denied")
    assert "SAFETY_ALLOW_DESTRUCTIVE_OPERATIONS" in text
    default.ok("docker_version")  # the server keeps serving
    # the one unnamed engine is called "default"; no other name exists
    assert default.ok("docker_version", {"engine": "default"})["api_version"]
    assert "configured: default" in default.error("docker_version", {"engine": "prod"}, "invalid_argument")


def test_unknown_tool_is_a_jsonrpc_error(default):
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError) as info:
        default.call("docker_format_disk", {})
    assert info.value.code == -32602


def test_raw_tools_list_uses_spec_key_names():
    """The wire output itself (not the SDK's parsed model) carries the spec's annotation keys."""
    proc = subprocess.Popen([*SERVER, "--allow-destructive"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})
    try:
        def send(message: dict[str, Any]) -> None:
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        init = json.loads(proc.stdout.readline())
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert init["result"]["serverInfo"]["name"] == "mcp-docker"
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        listing = json.loads(proc.stdout.readline())
        tools = listing["result"]["tools"]
        assert len(tools) == 45
        raw = json.dumps(tools)
        assert '"readOnly"' not in raw and '"destructive"' not in raw
        for t in tools:
            assert {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"} <= set(t["annotations"])
            assert "inputSchema" in t and "outputSchema" in t
        # no engine is needed to start or to list tools
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stderr.close()
        proc.stdout.close()


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
def test_stateless_era(mode):
    require_engine()
    h = Harness(["--allow-destructive"], mode=mode)
    try:
        assert h.client.session.protocol_version == "2026-07-28" if hasattr(h.client, "session") else True
        assert len(h.list_tools().tools) == 45
        assert h.ok("docker_version")["api_version"]
        h.error("docker_inspect_container", {"container": f"{PREFIX}-missing"}, "not_found")
    finally:
        h.close()


def test_gating_flags_shrink_the_list_and_are_enforced_on_call():
    require_engine()
    h = Harness(["--no-allow-moderate", "--toolsets", "containers,system"],
                env={"SAFETY_DENIED_TOOLS": "docker_container_top"})
    try:
        names = {t.name for t in h.list_tools().tools}
        assert "docker_list_containers" in names and "docker_version" in names
        assert "docker_container_top" not in names
        assert not names & {"docker_run_container", "docker_list_images", "docker_list_volumes"}
        assert "SAFETY_ALLOW_MODERATE" in h.error("docker_run_container", {"image": TEST_IMAGE}, "policy_denied")
        assert "MCP_TOOLSETS" in h.error("docker_list_images", {}, "policy_denied")
        assert "SAFETY_DENIED_TOOLS" in h.error("docker_container_top", {"container": "x"}, "policy_denied")
    finally:
        h.close()


def test_allowed_tools_list():
    require_engine()
    h = Harness(env={"SAFETY_ALLOWED_TOOLS": "docker_version,docker_list_containers"})
    try:
        assert {t.name for t in h.list_tools().tools} == {"docker_version", "docker_list_containers"}
    finally:
        h.close()


# =============================================================================================
# Integration: containers
# =============================================================================================


def test_container_lifecycle(full):
    name = f"{PREFIX}-life"
    created = full.ok("docker_create_container", {
        "image": TEST_IMAGE, "name": name, "command": ["sh", "-c", "echo started; trap 'exit 0' TERM; "
                                                      "while true; do sleep 1; done"],
        "network": "none", "environment": {"MODE": "test", "DB_PASSWORD": "hunter2"},
        "labels": {"io.mcp-docker.test": PREFIX}, "memory": "64m", "cpus": 0.5, "pids_limit": 64})
    assert created["status"] == "created" and created["id"]
    full.ok("docker_start_container", {"container": name})
    detail = full.ok("docker_inspect_container", {"container": name})
    assert detail["state"]["running"] is True and detail["name"] == name
    assert "DB_PASSWORD=<redacted>" in detail["config"]["env"] and "MODE=test" in detail["config"]["env"]
    assert detail["host_config"]["memory_bytes"] == 64 * 1024**2 and detail["host_config"]["pids_limit"] == 64
    assert "no-new-privileges:true" in detail["host_config"]["security_opt"]
    assert detail["config"]["labels"]["io.mcp-docker.managed"] == "true"
    # the same values on every engine (Podman says localhost/..., [] and "" where Docker says these)
    assert detail["image"] == TEST_IMAGE and detail["config"]["entrypoint"] is None
    assert detail["state"]["health"] is None

    listed = full.ok("docker_list_containers", {"name": name})
    assert [c["name"] for c in listed["containers"]] == [name]
    assert set(listed["containers"][0]) == {"id", "name", "image", "state", "status", "created", "ports"}
    assert listed["containers"][0]["image"] == TEST_IMAGE
    by_image = full.ok("docker_list_containers", {"ancestor": TEST_IMAGE, "name": name})["containers"]
    assert [c["name"] for c in by_image] == [name]

    deadline = time.time() + 10
    while "started" not in full.ok("docker_container_logs", {"container": name})["lines"] and time.time() < deadline:
        time.sleep(0.2)
    assert full.ok("docker_container_logs", {"container": name, "tail": 5})["lines"] == ["started"]
    stats = full.ok("docker_container_stats", {"container": name})
    assert stats["memory"]["limit_bytes"] == 64 * 1024**2 and stats["pids"] >= 1
    assert isinstance(stats["cpu_percent"], (int, float)) and stats["memory"]["used_bytes"] > 0
    assert set(stats) == {"container", "cpu_percent", "memory", "network", "block_io", "pids"}
    top = full.ok("docker_container_top", {"container": name})
    assert {"UID", "PID", "CMD"} <= set(top["titles"]) and top["processes"]
    assert all(len(row) == len(top["titles"]) for row in top["processes"])
    assert any("sleep" in row[top["titles"].index("CMD")] for row in top["processes"])

    out = full.ok("docker_exec_command", {"container": name, "command": ["sh", "-c", "echo out; echo err >&2; "
                                                                         "touch /made; exit 3"]})
    assert out == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n", "truncated": False}
    changes = full.ok("docker_container_diff", {"container": name})["changes"]
    assert {"path": "/made", "kind": "A"} in changes

    full.ok("docker_pause_container", {"container": name})
    assert full.ok("docker_inspect_container", {"container": name})["state"]["paused"] is True
    full.ok("docker_unpause_container", {"container": name})
    full.ok("docker_restart_container", {"container": name, "timeout": 2})
    full.ok("docker_rename_container", {"container": name, "new_name": f"{name}2"})
    full.error("docker_inspect_container", {"container": name}, "not_found")
    full.ok("docker_kill_container", {"container": f"{name}2", "signal": "SIGKILL"})
    full.ok("docker_start_container", {"container": f"{name}2"})
    full.ok("docker_stop_container", {"container": f"{name}2", "timeout": 5})
    assert full.ok("docker_inspect_container", {"container": f"{name}2"})["state"]["running"] is False
    full.ok("docker_remove_container", {"container": f"{name}2"})
    full.error("docker_inspect_container", {"container": f"{name}2"}, "not_found")


def test_run_waits_and_removes(full):
    result = full.ok("docker_run_container", {"image": TEST_IMAGE, "name": f"{PREFIX}-once", "network": "none",
                                              "command": ["sh", "-c", "echo one; echo two; exit 4"],
                                              "wait": True, "remove": True, "labels": {"io.mcp-docker.test": PREFIX}})
    assert result["exit_code"] == 4 and result["lines"] == ["one", "two"] and result["removed"] is True
    full.error("docker_inspect_container", {"container": f"{PREFIX}-once"}, "not_found")
    assert "wait=true" in full.error("docker_run_container", {"image": TEST_IMAGE, "remove": True},
                                     "invalid_argument")


def test_published_ports_bind_to_loopback_by_default(full):
    name = sleeper(full, "ports", ports={"8080/tcp": 0}, network="bridge")
    detail = full.ok("docker_inspect_container", {"container": name})
    bindings = detail["ports"]["8080/tcp"]
    assert bindings and all(b.startswith("127.0.0.1:") for b in bindings)
    listed = full.ok("docker_list_containers", {"name": name})["containers"][0]
    assert listed["ports"][0].startswith("127.0.0.1:") and listed["ports"][0].endswith("->8080/tcp")


def test_logs_default_tail_and_truncation_keeps_newest():
    require_engine()
    h = Harness(["--max-output-bytes", "2048"])
    try:
        name = f"{PREFIX}-chatty"
        h.ok("docker_run_container", {"image": TEST_IMAGE, "name": name, "network": "none", "wait": True,
                                      "command": ["seq", "1", "3000"], "labels": {"io.mcp-docker.test": PREFIX}})
        default = h.ok("docker_container_logs", {"container": name})
        assert default["truncated"] is False and default["count"] == 100 and default["lines"][-1] == "3000"
        cut = h.ok("docker_container_logs", {"container": name, "tail": 3000})
        assert cut["truncated"] is True and cut["lines"][-1] == "3000" and 100 < len(cut["lines"]) < 3000
        assert len(json.dumps(cut, separators=(",", ":"))) <= 2048
        full_tail = h.ok("docker_container_logs", {"container": name, "tail": 10})
        assert full_tail["lines"] == [str(i) for i in range(2991, 3001)] and full_tail["truncated"] is False
        listing = h.ok("docker_list_images", {"limit": 1000})
        assert len(json.dumps(listing)) <= 2048 + 64
    finally:
        h.close()


def test_logs_default_is_100_lines(full):
    name = f"{PREFIX}-hundred"
    full.ok("docker_run_container", {"image": TEST_IMAGE, "name": name, "network": "none", "wait": True,
                                     "command": ["seq", "1", "500"], "labels": {"io.mcp-docker.test": PREFIX}})
    logs = full.ok("docker_container_logs", {"container": name})
    assert logs["count"] == 100 and logs["lines"][0] == "401" and logs["lines"][-1] == "500"


def test_exec_timeout_and_output_cap(full):
    name = sleeper(full, "exec")
    started = time.monotonic()
    text = full.error("docker_exec_command", {"container": name, "command": ["sleep", "30"], "timeout": 1}, "timeout")
    assert time.monotonic() - started < 10 and "1s" in text
    capped = full.ok("docker_exec_command", {"container": name, "command": ["seq", "1", "100000"],
                                             "max_output_bytes": 100})
    assert capped["truncated"] is True and capped["stdout"].endswith("100000\n") and len(capped["stdout"]) <= 100
    assert full.ok("docker_exec_command", {"container": name, "command": ["id", "-u"], "user": "65534"})["stdout"] \
        == "65534\n"
    assert full.ok("docker_exec_command", {"container": name, "command": ["sh", "-c", "echo $FOO; pwd"],
                                           "environment": {"FOO": "bar"}, "workdir": "/tmp"})["stdout"] == "bar\n/tmp\n"
    full.error("docker_exec_command", {"container": name, "command": "rm -rf /"}, "invalid_argument")
    full.error("docker_exec_command", {"container": name, "command": []}, "invalid_argument")


def test_prune_containers_with_label(full):
    name = f"{PREFIX}-prunable"
    full.ok("docker_create_container", {"image": TEST_IMAGE, "name": name, "network": "none",
                                        "labels": {"io.mcp-docker.test": PREFIX}})
    idle = full.ok("docker_container_stats", {"container": name})  # not running: an answer, not an error
    assert idle["cpu_percent"] is None and idle["memory"]["used_bytes"] == 0 and idle["pids"] is None
    pruned = full.ok("docker_prune_containers", {"label": [TEST_LABEL]})
    assert pruned["count"] >= 1
    full.error("docker_inspect_container", {"container": name}, "not_found")


CONTAINER_BAD_INPUT = [
    ("docker_inspect_container", {}, "missing required argument 'container'"),
    ("docker_inspect_container", {"container": 42}, "must be of type string"),
    ("docker_inspect_container", {"container": "x", "verbose": True}, "unknown argument 'verbose'"),
    ("docker_inspect_container", {"container": "x" * 1_000_000}, "longer than"),
    ("docker_inspect_container", {"container": "a/../../etc/passwd"}, "not allowed"),
    ("docker_inspect_container", {"container": "bad name;rm"}, "not allowed"),
    ("docker_container_logs", {"container": "x", "tail": -1}, "at least 1"),
    ("docker_container_logs", {"container": "x", "tail": "100"}, "must be of type integer"),
    ("docker_list_containers", {"status": "sleeping"}, "must be one of"),
    ("docker_create_container", {"image": TEST_IMAGE, "privileged": True}, "unknown argument 'privileged'"),
    ("docker_create_container", {"image": TEST_IMAGE, "volumes": [{"source": "/etc", "target": "/x"}]},
     "not allowed"),
    ("docker_create_container", {"image": TEST_IMAGE, "ports": {"http": 80}}, "not allowed"),
    ("docker_create_container", {"image": TEST_IMAGE, "memory": "lots"}, "not a size"),
    ("docker_create_container", {"image": TEST_IMAGE, "environment": {"BAD NAME": "x"}}, "not allowed"),
    ("docker_kill_container", {"container": "x", "signal": "KILL; rm -rf /"}, "not allowed"),
]


@pytest.mark.parametrize(("tool_name", "args", "message"), CONTAINER_BAD_INPUT)
def test_container_bad_input(full, tool_name, args, message):
    text = full.error(tool_name, args, "invalid_argument")
    assert message in text and len(text) < 400


def test_nonexistent_and_conflicting_containers(full):
    missing = f"{PREFIX}-nope"
    for tool_name in ("docker_inspect_container", "docker_container_logs", "docker_container_top",
                      "docker_container_diff", "docker_start_container", "docker_stop_container",
                      "docker_remove_container"):
        text = full.error(tool_name, {"container": missing}, "not_found")
        assert "/var/" not in text and "sock" not in text
    full.error("docker_exec_command", {"container": missing, "command": ["true"]}, "not_found")
    name = sleeper(full, "dup")
    full.error("docker_create_container", {"image": TEST_IMAGE, "name": name}, "conflict")
    full.error("docker_remove_container", {"container": name}, "conflict")
    full.error("docker_create_container", {"image": f"{PREFIX}/not-here:1", "name": f"{PREFIX}-noimg"},
               "not_found")
    assert full.ok("docker_version")["kind"] in ("docker", "podman")  # still serving


# =============================================================================================
# Integration: images
# =============================================================================================


def test_image_tools(full):
    images = full.ok("docker_list_images", {"name": TEST_IMAGE})["images"]
    assert any(TEST_IMAGE in i["tags"] for i in images)
    detail = full.ok("docker_inspect_image", {"image": TEST_IMAGE})
    assert detail["id"] and detail["layers"] >= 1 and TEST_IMAGE in detail["tags"]
    # Docker's reference filter: "busybox" is not "mcp-docker-test/busybox" (Podman's own filter says it is)
    assert not any(TEST_IMAGE in i["tags"] for i in full.ok("docker_list_images", {"name": "busybox"})["images"])
    assert any(TEST_IMAGE in i["tags"] for i in full.ok("docker_list_images", {"name": "mcp-docker-test/*"})["images"])
    history = full.ok("docker_image_history", {"image": TEST_IMAGE})
    assert history["count"] >= 1

    tag = f"{PREFIX}-built:1"
    built = full.ok("docker_build_image", {
        "tag": tag, "dockerfile": f"FROM {TEST_IMAGE}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
        "files": {"hello.txt": "hello from build\n"}, "labels": {"io.mcp-docker.test": PREFIX}, "network": "none"})
    assert built["status"] == "built" and any("hello from build" in line for line in built["log"])
    assert full.ok("docker_inspect_image", {"image": tag})["tags"] == [tag]
    assert tag in full.ok("docker_image_history", {"image": tag})["layers"][0]["tags"]
    assert any(tag in i["tags"] for i in full.ok("docker_list_images", {"label": [TEST_LABEL]})["images"])
    ran = full.ok("docker_run_container", {"image": tag, "command": ["cat", "/hello.txt"], "wait": True,
                                           "remove": True, "network": "none", "labels": {"io.mcp-docker.test": PREFIX}})
    assert ran["lines"] == ["hello from build"]
    failed = full.error("docker_build_image", {"tag": f"{PREFIX}-bad:1", "network": "none",
                                               "dockerfile": f"FROM {TEST_IMAGE}\nRUN exit 7\n"})
    assert "build failed" in failed
    full.error("docker_build_image", {"tag": f"{PREFIX}-x:1", "dockerfile": "FROM x", "files": {"../evil": "x"}},
               "invalid_argument")

    full.ok("docker_tag_image", {"image": tag, "repository": f"127.0.0.1:9/{PREFIX}-pushme", "tag": "2"})
    assert any(f"127.0.0.1:9/{PREFIX}-pushme:2" in i["tags"]
               for i in full.ok("docker_list_images", {"label": [TEST_LABEL]})["images"])
    # No registry is reachable here: push and pull must fail cleanly, quickly, without host details.
    push_error = full.error("docker_push_image", {"image": f"127.0.0.1:9/{PREFIX}-pushme:2"})
    pull_error = full.error("docker_pull_image", {"image": f"127.0.0.1:9/{PREFIX}-absent:1"})
    for text in (push_error, pull_error):
        assert "127.0.0.1" not in text and "/var/run" not in text
    removed = full.ok("docker_remove_image", {"image": f"127.0.0.1:9/{PREFIX}-pushme:2"})
    assert removed["deleted"] == [f"127.0.0.1:9/{PREFIX}-pushme:2"]
    assert tag in full.ok("docker_remove_image", {"image": tag, "force": True})["deleted"]
    full.error("docker_inspect_image", {"image": tag}, "not_found")


def test_prune_images_with_label(full):
    built = full.ok("docker_build_image", {"tag": f"{PREFIX}-dangling:1", "network": "none",
                                           "dockerfile": f"FROM {TEST_IMAGE}\nRUN echo one > /one\n",
                                           "labels": {"io.mcp-docker.test": PREFIX}})
    full.ok("docker_build_image", {"tag": f"{PREFIX}-dangling:1", "network": "none", "no_cache": True,
                                   "dockerfile": f"FROM {TEST_IMAGE}\nRUN echo two > /two\n",
                                   "labels": {"io.mcp-docker.test": PREFIX}})
    pruned = full.ok("docker_prune_images", {"label": [TEST_LABEL]})
    assert built["id"] in pruned["deleted"]


@pytest.mark.parametrize(("tool_name", "args", "message"), [
    ("docker_inspect_image", {"image": "UPPER CASE"}, "not allowed"),
    ("docker_pull_image", {}, "missing required argument 'image'"),
    ("docker_pull_image", {"image": "x", "platform": "linux/amd64; rm"}, "not allowed"),
    ("docker_build_image", {"tag": "x:1"}, "missing required argument 'dockerfile'"),
    ("docker_build_image", {"tag": "x:1", "dockerfile": "FROM x", "path": "/"}, "unknown argument 'path'"),
    ("docker_tag_image", {"image": "x", "repository": "Has Space"}, "not allowed"),
    ("docker_list_images", {"limit": 10**9}, "at most"),
])
def test_image_bad_input(full, tool_name, args, message):
    assert message in full.error(tool_name, args, "invalid_argument")


# =============================================================================================
# Integration: networks and volumes
# =============================================================================================


def test_network_tools(full):
    net = f"{PREFIX}-net"
    created = full.ok("docker_create_network", {"name": net, "internal": True,
                                                "labels": {"io.mcp-docker.test": PREFIX}})
    assert created["id"]
    assert [n["name"] for n in full.ok("docker_list_networks", {"name": net})["networks"]] == [net]
    name = f"{PREFIX}-netc"
    full.ok("docker_run_container", {"image": TEST_IMAGE, "name": name, "command": ["sleep", "3600"],
                                     "labels": {"io.mcp-docker.test": PREFIX}})
    full.ok("docker_connect_container", {"network": net, "container": name, "aliases": ["svc"]})
    detail = full.ok("docker_inspect_network", {"network": net})
    assert detail["internal"] is True and [c["name"] for c in detail["containers"]] == [name]
    full.error("docker_remove_network", {"network": net}, "conflict")  # in use
    full.error("docker_create_network", {"name": net}, "conflict")
    full.ok("docker_disconnect_container", {"network": net, "container": name})
    assert full.ok("docker_inspect_network", {"network": net})["containers"] == []
    full.ok("docker_remove_network", {"network": net})
    full.error("docker_inspect_network", {"network": net}, "not_found")
    full.ok("docker_create_network", {"name": f"{PREFIX}-net2", "labels": {"io.mcp-docker.test": PREFIX},
                                      "subnet": "10.231.7.0/24", "gateway": "10.231.7.1"})
    pruned = full.ok("docker_prune_networks", {"label": [TEST_LABEL]})
    assert f"{PREFIX}-net2" in pruned["deleted"]
    full.error("docker_create_network", {"name": "x", "gateway": "10.0.0.1"}, "invalid_argument")
    full.error("docker_create_network", {"name": "x", "driver": "host"}, "invalid_argument")
    full.error("docker_connect_container", {"network": f"{PREFIX}-nonet", "container": name}, "not_found")


def test_volume_tools(full):
    vol = f"{PREFIX}-vol"
    full.ok("docker_create_volume", {"name": vol, "labels": {"io.mcp-docker.test": PREFIX}})
    assert [v["name"] for v in full.ok("docker_list_volumes", {"name": vol})["volumes"]] == [vol]
    assert full.ok("docker_inspect_volume", {"volume": vol})["driver"] == "local"
    writer = full.ok("docker_run_container", {"image": TEST_IMAGE, "network": "none", "wait": True, "remove": True,
                                              "volumes": [{"source": vol, "target": "/data"}],
                                              "command": ["sh", "-c", "echo kept > /data/f && cat /data/f"],
                                              "labels": {"io.mcp-docker.test": PREFIX}})
    assert writer["lines"] == ["kept"]
    reader = full.ok("docker_run_container", {"image": TEST_IMAGE, "network": "none", "wait": True, "remove": True,
                                              "volumes": [{"source": vol, "target": "/data", "read_only": True}],
                                              "command": ["sh", "-c", "cat /data/f; touch /data/g || echo ro"],
                                              "labels": {"io.mcp-docker.test": PREFIX}})
    assert "kept" in reader["lines"] and "ro" in reader["lines"]
    holder = sleeper(full, "volholder", volumes=[{"source": vol, "target": "/data"}])
    full.error("docker_remove_volume", {"volume": vol}, "conflict")
    full.ok("docker_remove_container", {"container": holder, "force": True})
    full.ok("docker_remove_volume", {"volume": vol})
    full.error("docker_inspect_volume", {"volume": vol}, "not_found")
    volume_events = full.ok("docker_events", {"since_seconds": 300, "type": "volume"})["events"]
    assert {"action": "create", "id": vol, "name": vol} in [
        {k: e[k] for k in ("action", "id", "name")} for e in volume_events]
    full.ok("docker_create_volume", {"name": f"{PREFIX}-vol2", "labels": {"io.mcp-docker.test": PREFIX}})
    pruned = full.ok("docker_prune_volumes", {"label": [TEST_LABEL]})
    assert f"{PREFIX}-vol2" in pruned["deleted"]
    full.error("docker_create_volume", {"name": "x", "driver_opts": {"device": "/etc"}}, "invalid_argument")
    full.error("docker_create_volume", {"name": "/etc"}, "invalid_argument")


# =============================================================================================
# Integration: system
# =============================================================================================


def test_system_tools(full):
    version = full.ok("docker_version")
    assert version["kind"] in ("docker", "podman") and version["version"]
    info = full.ok("docker_system_info")
    assert info["containers"]["total"] >= 0 and info["cpus"] >= 1
    assert isinstance(info["rootless"], bool)
    usage = full.ok("docker_disk_usage", {"top": 2})
    assert usage["images"]["count"] >= 1 and len(usage["images"]["largest"]) <= 2
    for item in usage["images"]["largest"]:  # a name:tag or a short ID, never a bare tag
        assert ":" in item["name"] or len(item["name"]) == 12, item
    name = f"{PREFIX}-evt"
    full.ok("docker_run_container", {"image": TEST_IMAGE, "name": name, "command": ["true"], "wait": True,
                                     "network": "none", "labels": {"io.mcp-docker.test": PREFIX}})
    started = time.monotonic()
    events = full.ok("docker_events", {"since_seconds": 120, "type": "container", "container": name})
    assert time.monotonic() - started < 5
    actions = [e["action"] for e in events["events"]]
    assert "start" in actions and "die" in actions
    limited = full.ok("docker_events", {"since_seconds": 600, "limit": 1})
    assert limited["count"] <= 1
    full.error("docker_events", {"since_seconds": 10**9}, "invalid_argument")
    full.error("docker_disk_usage", {"top": "all"}, "invalid_argument")


@pytest.mark.skipif(os.environ.get("MCP_DOCKER_TEST_SYSTEM_PRUNE") != "1",
                    reason="prunes the whole engine; set MCP_DOCKER_TEST_SYSTEM_PRUNE=1 (CI does)")
def test_prune_system(full):
    name = f"{PREFIX}-stopped"
    full.ok("docker_create_container", {"image": TEST_IMAGE, "name": name, "network": "none",
                                        "labels": {"io.mcp-docker.test": PREFIX}})
    result = full.ok("docker_prune_system")
    assert result["containers"] >= 1
    full.error("docker_inspect_container", {"container": name}, "not_found")
    assert full.ok("docker_inspect_image", {"image": TEST_IMAGE})["id"]  # tagged images stay


# =============================================================================================
# Integration: engine availability
# =============================================================================================


class SocketProxy:
    """A unix-socket proxy to the real engine that can be started late, to simulate an engine coming back."""

    def __init__(self, path: str, target: str = "/var/run/docker.sock"):
        self.path, self.target = path, target
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        if self.server:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def test_engine_unavailable_then_back_without_restart(tmp_path):
    require_engine()
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("needs the engine at /var/run/docker.sock")
    path = str(tmp_path / "late.sock")
    h = Harness(env={"DOCKER_HOST": f"unix://{path}"})
    proxy = SocketProxy(path)
    try:
        assert len(h.list_tools().tools) == 36  # listing needs no engine
        text = h.error("docker_list_containers", {}, "engine_unavailable")
        assert path not in text and "sock" not in text
        proxy.start()
        assert h.ok("docker_version")["api_version"]
        assert h.ok("docker_list_containers", {"all": True})["count"] >= 0
    finally:
        h.close()
        proxy.stop()


# =============================================================================================
# Integration: several engines behind one server; remote (TCP + TLS) engines; engine discovery
# =============================================================================================


class NotAnEngine:
    """A unix socket where no engine is: it answers like a web server, greets like SSH, or holds on."""

    def __init__(self, path: str, mode: str):
        self.path, self.mode = path, mode
        self.server: socket.socket | None = None
        self.held: list[socket.socket] = []
        self.connected = threading.Event()

    def start(self) -> NotAnEngine:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connected.set()
            if self.mode == "hold":
                self.held.append(conn)
                continue
            with contextlib.suppress(OSError):
                if self.mode == "http404":
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
                                 b"Connection: close\r\n\r\nnot found")
                else:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

    def stop(self) -> None:
        if self.server:
            self.server.close()
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.mark.multi_engine
def test_named_engines_each_with_its_own_limits(tmp_path):
    require_engine()
    web = NotAnEngine(str(tmp_path / "web.sock"), "http404").start()
    ssh = NotAnEngine(str(tmp_path / "ssh.sock"), "ssh").start()
    names = ["main", "ro", "nodel", "gone", "web", "ssh", "remote"]
    h = Harness(["--allow-destructive", "--engine", f"main={ENGINE_URL}", "--engine", f"ro={ENGINE_URL};read-only",
                 "--engine", f"nodel={ENGINE_URL};no-destructive", "--engine", f"gone=unix://{tmp_path}/gone.sock",
                 "--engine", f"web=unix://{web.path},ssh=unix://{ssh.path}", "--engine", "remote=ssh://nobody@127.0.0.1:1"])
    try:
        tools = {t.name: t for t in h.list_tools().tools}
        assert set(tools) == ALL_TOOLS
        assert tools["docker_version"].input_schema["properties"]["engine"]["enum"] == names
        listing = h.ok("docker_list_engines")
        rows = {r["name"]: r for r in listing["engines"]}
        assert [r["name"] for r in listing["engines"]] == names and listing["count"] == 7
        assert rows["main"]["default"] is True and not any(rows[n]["default"] for n in names[1:])
        assert all(rows[n]["reachable"] and rows[n]["kind"] == rows["main"]["kind"] for n in ("main", "ro", "nodel"))
        assert rows["main"]["kind"] in ("docker", "podman") and rows["main"]["version"]
        assert isinstance(rows["main"]["rootless"], bool) and rows["main"]["transport"] == "unix"
        assert (rows["ro"]["access"], rows["nodel"]["access"], rows["main"]["access"]) == \
            ("read-only", "no-destructive", "full")
        for down in ("gone", "remote"):
            assert not rows[down]["reachable"] and rows[down]["error"].startswith("engine_unavailable")
        assert rows["remote"]["transport"] == "ssh"
        for fake in ("web", "ssh"):
            assert not rows[fake]["reachable"] and "not the Docker engine API" in rows[fake]["error"]
        assert str(tmp_path) not in json.dumps(listing) and ".sock" not in json.dumps(listing)

        assert h.ok("docker_version")["kind"] == rows["main"]["kind"]  # the first engine is the default
        # each engine's ceiling holds on the call path, whatever the server-wide settings allow
        assert "read-only" in h.error("docker_run_container", {"image": TEST_IMAGE, "engine": "ro"}, "policy_denied")
        name = sleeper(h, "multi", engine="nodel")
        assert h.ok("docker_inspect_container", {"container": name, "engine": "ro"})["state"]["running"] is True
        assert "destructive" in h.error("docker_remove_container", {"container": name, "force": True,
                                                                    "engine": "nodel"}, "policy_denied")
        assert "destructive" in h.error("docker_prune_volumes", {"engine": "ro"}, "policy_denied")
        # engines that are not there, or are not engines: a clear error naming them; the others keep working
        # (ssh:// without the optional paramiko says how to get it; with it, port 1 refuses: not reachable)
        for bad, words in (("gone", "not reachable"), ("web", "not the Docker engine API"),
                           ("ssh", "not the Docker engine API"), ("remote", "")):
            text = h.error("docker_list_containers", {"engine": bad}, "engine_unavailable")
            assert f"engine '{bad}'" in text and words in text and str(tmp_path) not in text and "sock" not in text
            assert h.ok("docker_version", {"engine": "ro"})["version"]
        h.ok("docker_remove_container", {"container": name, "force": True, "engine": "main"})
        assert "configured: main, ro" in h.error("docker_version", {"engine": "nope"}, "invalid_argument")
        h.error("docker_version", {"engine": "bad name;"}, "invalid_argument")
    finally:
        h.close()
        web.stop()
        ssh.stop()


@pytest.mark.multi_engine
def test_read_only_engines_shrink_the_tool_list():
    require_engine()
    h = Harness(["--allow-destructive", "--engine", f"only={ENGINE_URL};read-only"])
    try:
        names = {t.name for t in h.list_tools().tools}
        assert names == {n for n, s in md.TOOLS.items() if s.tier is md.Tier.SAFE}
        assert "every configured engine" in h.error("docker_run_container", {"image": TEST_IMAGE}, "policy_denied")
        assert h.ok("docker_list_containers", {"engine": "only", "all": True})["count"] >= 0
    finally:
        h.close()


@pytest.mark.multi_engine
def test_a_hung_engine_blocks_no_other(tmp_path):
    require_engine()
    hung = NotAnEngine(str(tmp_path / "hung.sock"), "hold").start()
    h = Harness(["--engine", f"main={ENGINE_URL}", "--engine", f"hung=unix://{hung.path}"])
    try:
        pending = asyncio.run_coroutine_threadsafe(
            h.client.call_tool("docker_list_containers", {"engine": "hung"}), h.loop)
        assert hung.connected.wait(30)  # that call is now waiting on an engine that never answers
        for _ in range(3):
            assert h.ok("docker_version", {"engine": "main"})["version"]
            assert h.ok("docker_list_containers", {"engine": "main", "all": True})["count"] >= 0
        assert not pending.done()
        hung.stop()  # the engine vanishes mid-call
        result = pending.result(60)
        assert result.is_error and result.content[0].text.startswith("engine_unavailable: engine 'hung'")
        assert h.ok("docker_version")["version"]
    finally:
        h.close()
        hung.stop()


@pytest.mark.multi_engine
def test_docker_and_podman_at_once():
    """One server drives a Docker and a Podman engine (MCP_DOCKER_TEST_ENGINES names them; CI sets it)."""
    if not TEST_ENGINES:
        pytest.skip("set MCP_DOCKER_TEST_ENGINES=docker=unix:///var/run/docker.sock,podman=unix:///tmp/podman.sock")
    require_engine()
    engines = [e.name for e in md.load_settings({}, {"MCP_ENGINES": TEST_ENGINES}).engines]
    h = Harness(["--allow-destructive", "--engine", TEST_ENGINES])
    try:
        rows = {r["name"]: r for r in h.ok("docker_list_engines")["engines"]}
        assert all(r["reachable"] for r in rows.values()), rows
        assert {r["kind"] for r in rows.values()} >= {"docker", "podman"}
        name = f"{PREFIX}-both"  # the same name on every engine: they are separate worlds
        shapes = set()
        for engine in engines:
            assert h.ok("docker_version", {"engine": engine})["kind"] == rows[engine]["kind"]
            sleeper(h, "both", engine=engine)
            listed = h.ok("docker_list_containers", {"name": name, "engine": engine})["containers"]
            assert [c["name"] for c in listed] == [name] and listed[0]["image"] == TEST_IMAGE
            detail = h.ok("docker_inspect_container", {"container": name, "engine": engine})
            ran = h.ok("docker_exec_command", {"container": name, "command": ["echo", engine], "engine": engine})
            assert ran == {"exit_code": 0, "stdout": f"{engine}\n", "stderr": "", "truncated": False}
            stats = h.ok("docker_container_stats", {"container": name, "engine": engine})
            images = h.ok("docker_list_images", {"name": TEST_IMAGE, "engine": engine})["images"]
            assert [TEST_IMAGE in i["tags"] for i in images] == [True]
            shapes.add(json.dumps([sorted(listed[0]), sorted(detail), sorted(detail["state"]), sorted(detail["config"]),
                                   sorted(detail["host_config"]), sorted(stats), sorted(stats["memory"]),
                                   sorted(images[0])]))
        assert len(shapes) == 1  # the same answer shapes from every engine
        first, *others = engines
        h.ok("docker_remove_container", {"container": name, "force": True, "engine": first})
        h.error("docker_inspect_container", {"container": name, "engine": first}, "not_found")
        for engine in others:
            assert h.ok("docker_inspect_container", {"container": name, "engine": engine})["state"]["running"]
            h.ok("docker_remove_container", {"container": name, "force": True, "engine": engine})
    finally:
        h.close()


def make_tls_files(directory: Path, ca_name: str) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as the docker CLI lays them out."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)

    def named(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(named(ca_name)).issuer_name(named(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(named(f"{ca_name} {stem}")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if stem == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        prefix = "server-" if stem == "server" else ""  # the client's files are cert.pem and key.pem
        (directory / f"{prefix}cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{prefix}key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class TLSEngineProxy:
    """An engine on 127.0.0.1 over TLS that demands a client certificate from its CA (like dockerd --tlsverify),
    forwarding to the real engine's unix socket."""

    def __init__(self, certs: Path, target: str):
        import ssl

        self.target = target
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs / "server-cert.pem", certs / "server-key.pem")
        self.context.load_verify_locations(certs / "ca.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.target)
        threading.Thread(target=SocketProxy._pipe, args=(upstream, client), daemon=True).start()
        SocketProxy._pipe(client, upstream)

    def stop(self) -> None:
        self.server.close()


@pytest.mark.multi_engine
def test_tcp_engine_with_tls_client_certificate(tmp_path):
    require_engine()
    if not ENGINE_URL.startswith("unix://"):
        pytest.skip("the TLS proxy forwards to a unix-socket engine")
    make_tls_files(tmp_path / "good", "test CA")
    make_tls_files(tmp_path / "other", "another CA")
    proxy = TLSEngineProxy(tmp_path / "good", ENGINE_URL[len("unix://"):])
    url = f"tcp://127.0.0.1:{proxy.port}"
    h = Harness(["--engine", f"tls={url};cert-path={tmp_path}/good", "--engine", f"wrongca={url};cert-path="
                 f"{tmp_path}/other", "--engine", f"nocerts={url};cert-path={tmp_path}/missing",
                 "--engine", f"plain={url}"])
    try:
        assert h.ok("docker_version", {"engine": "tls"})["api_version"]
        assert h.ok("docker_list_containers", {"engine": "tls", "all": True})["count"] >= 0
        rows = {r["name"]: r for r in h.ok("docker_list_engines")["engines"]}
        assert rows["tls"]["reachable"] and rows["tls"]["tls"] is True and rows["tls"]["transport"] == "tcp"
        assert not rows["plain"]["reachable"] and rows["plain"]["tls"] is False
        for name, words in (("wrongca", "TLS handshake"), ("nocerts", "TLS files"), ("plain", "")):
            text = h.error("docker_version", {"engine": name}, "engine_unavailable")
            assert f"engine '{name}'" in text and words in text
            assert "127.0.0.1" not in text and str(tmp_path) not in text
        assert h.ok("docker_version", {"engine": "tls"})["version"]
    finally:
        h.close()
        proxy.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "mcp_docker.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env or dict(os.environ), stdin=subprocess.DEVNULL)


def test_engines_command_and_verbose_discovery(tmp_path):
    require_engine()
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST")}
    env.update(HOME=str(tmp_path), CONTAINER_HOST=ENGINE_URL)
    found = run_cli("engines", "--json", env=env)
    assert found.returncode == 0, found.stderr
    [row] = json.loads(found.stdout)
    assert (row["name"], row["found_by"], row["url"], row["reachable"]) == ("default", "CONTAINER_HOST", ENGINE_URL, True)
    assert row["kind"] in ("docker", "podman") and row["version"] and isinstance(row["rootless"], bool)
    listed = run_cli("engines", "--engine", f"main={ENGINE_URL}", "--engine", f"gone=unix://{tmp_path}/x.sock")
    assert listed.returncode == 1
    assert f"main (default): {ENGINE_URL}" in listed.stdout and "gone: unix://" in listed.stdout
    assert "unreachable: engine_unavailable" in listed.stdout
    bad = run_cli("engines", "--engine", "nonsense")
    assert bad.returncode == 2 and "NAME=URL" in bad.stderr
    # serve --verbose: what was chosen and why, without contacting the engine
    served = subprocess.run([*SERVER, "--verbose"], capture_output=True, text=True, timeout=60, env=env, input="")
    assert f"engine 'default': {ENGINE_URL} from CONTAINER_HOST" in served.stderr
    assert "looked at --docker-host / DOCKER_HOST: not set" in served.stderr
    assert "docker at" not in served.stderr and "podman at" not in served.stderr  # no engine contact
