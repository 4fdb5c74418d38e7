#!/usr/bin/env bash
# Install and start the real engines the tests run against, and import the busybox test image
# into each: Docker (dockerd on /var/run/docker.sock) and Podman (`podman system service` on
# unix:///tmp/podman.sock, or $MCP_DOCKER_PODMAN_SOCKET). MCP_DOCKER_SKIP_PODMAN=1 sets up Docker only.
# Idempotent: safe to run on a machine where some of it is already done.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PODMAN_SOCKET=${MCP_DOCKER_PODMAN_SOCKET:-/tmp/podman.sock}
TEST_IMAGE=mcp-docker-test/busybox:1
want_podman=1
[ "${MCP_DOCKER_SKIP_PODMAN:-}" = 1 ] && want_podman=0

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sleep || need_apt+=(busybox-static)
[ $want_podman = 1 ] && ! command -v podman >/dev/null 2>&1 && need_apt+=(podman)
# The deployment tests: nginx in front, logrotate rotating the audit log, systemd-analyze checking the unit.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
command -v logrotate >/dev/null 2>&1 || need_apt+=(logrotate)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The compose tests drive the real Compose tools: Debian's docker-compose (1.x) against Docker and
# podman-compose against Podman (the docker compose v2 plugin is not packaged here; discovery covers it).
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
[ $want_podman = 1 ] && ! command -v podman-compose >/dev/null 2>&1 && need_apt+=(podman-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The test image: busybox's applets in an otherwise empty filesystem (nothing can be pulled here).
image_tar() {
  local root
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sleep echo cat ls printf env id ps top yes head tail touch rm mkdir true false wc seq grep; do
    ln -s busybox "$root/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
  echo "root:x:0:" > "$root/etc/group"
  tar -C "$root" -c .
  rm -rf "$root"
}

# -- Docker ---------------------------------------------------------------------------------------
if ! docker version >/dev/null 2>&1; then
  (dockerd >/var/log/mcp-docker-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && break
    sleep 1
  done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -n 30 /var/log/mcp-docker-dockerd.log; exit 1; }
fi
if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
  image_tar | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$TEST_IMAGE" >/dev/null
fi
echo "engine ready: docker $(docker version --format '{{.Server.Version}}') with $TEST_IMAGE"

# -- Podman ---------------------------------------------------------------------------------------
[ $want_podman = 1 ] || exit 0
# Without explicit rlimits runc fails here setting RLIMIT_NOFILE/NPROC above what the machine grants.
conf=/etc/containers/containers.conf
mkdir -p /etc/containers
if ! grep -q '^[[:space:]]*default_ulimits' "$conf" 2>/dev/null; then
  line='default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
  if grep -q '^\[containers\]' "$conf" 2>/dev/null; then
    sed -i "/^\[containers\]/a $line" "$conf"
  else
    printf '[containers]\n%s\n' "$line" >> "$conf"
  fi
fi
podman_up() { podman --url "unix://$PODMAN_SOCKET" version >/dev/null 2>&1; }
if ! podman_up; then
  rm -f "$PODMAN_SOCKET"
  (setsid podman system service --time=0 "unix://$PODMAN_SOCKET" >/var/log/mcp-docker-podman.log 2>&1 &)
  for _ in $(seq 1 60); do
    podman_up && break
    sleep 1
  done
  podman_up || { echo "podman system service did not start:"; tail -n 30 /var/log/mcp-docker-podman.log; exit 1; }
fi
# Podman stores a short name under localhost/ and resolves mcp-docker-test/busybox:1 to it.
if ! podman image exists "$TEST_IMAGE"; then
  image_tar | podman import -q -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$TEST_IMAGE" >/dev/null
fi
echo "engine ready: podman $(podman --url "unix://$PODMAN_SOCKET" version --format '{{.Server.Version}}') at unix://$PODMAN_SOCKET with localhost/$TEST_IMAGE"
