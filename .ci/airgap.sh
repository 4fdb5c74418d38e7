#!/usr/bin/env bash
# The README's air-gapped path, proved: carry the dependencies as a wheelhouse (pip download), install
# them in a clean virtual environment with the package index switched off (and no pip configuration,
# so no other wheel source can help), then run the single file and get an MCP answer over stdio.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=('mcp>=2.3,<3' 'docker>=7.1,<8' 'click>=8.1')   # as in README and pyproject.toml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# on the connected machine
python3 -m pip download --quiet --disable-pip-version-check --dest "$work/wheelhouse" "${REQUIREMENTS[@]}"
cp mcp_docker.py "$work/wheelhouse/"

# on the host without network: nothing but the wheelhouse
offline=(env -i "PATH=/usr/bin:/bin" "HOME=$work" "PIP_CONFIG_FILE=/dev/null" "PIP_NO_INDEX=1")
python3 -m venv "$work/venv"
"${offline[@]}" "$work/venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-index \
  --find-links "$work/wheelhouse" "${REQUIREMENTS[@]}"
cd "$work"
answer=$(printf '%s\n' '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"airgap-ci","version":"1"}}}' \
  | "${offline[@]}" SECURITY_AUDIT_LOG_FILE="$work/audit.log" timeout 60 "$work/venv/bin/python3" wheelhouse/mcp_docker.py serve)
echo "$answer" | grep -q '"name":"mcp-docker"' || { echo "airgap: no initialize answer: $answer" >&2; exit 1; }
echo "airgap: installed from the wheelhouse alone; python3 mcp_docker.py serve answers initialize"
