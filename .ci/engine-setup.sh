#!/usr/bin/env bash
# Install and start a real Docker engine and import the busybox test image.
# Idempotent: safe to run on a machine where some of it is already done.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sleep || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! docker version >/dev/null 2>&1; then
  (dockerd >/var/log/mcp-docker-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && break
    sleep 1
  done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -n 30 /var/log/mcp-docker-dockerd.log; exit 1; }
fi
if ! docker image inspect mcp-docker-test/busybox:1 >/dev/null 2>&1; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sleep echo cat ls printf env id ps top yes head tail touch rm mkdir true false wc seq grep; do
    ln -s busybox "$root/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
  echo "root:x:0:" > "$root/etc/group"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - mcp-docker-test/busybox:1 >/dev/null
  rm -rf "$root"
fi
echo "engine ready: $(docker version --format '{{.Server.Version}}') with mcp-docker-test/busybox:1"
