#!/usr/bin/env bash
# Makes sure a Docker engine answers, then prints the docker CLI that builds with BuildKit.
#   DOCKER="$(bash scripts/docker-engine.sh)"
# An engine that already answers (Docker Desktop, a system service, DOCKER_HOST) is used as it is.
# Otherwise, as root on Debian/Ubuntu, Debian's engine is installed (scripts/system-packages.sh
# docker) and started as `dockerd --iptables=false --bridge=none`: with its defaults it turns the
# FORWARD policy to DROP and sends bridged traffic through iptables, which silently cuts every
# bridge between network namespaces on the machine (the test hosts: ../shared/test-hosts.md).
# Containers then use host networking, or a veth of their own (tests/test_docker.py).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG=/var/log/hvdtrain-dockerd.log

# The first CLI whose `build` takes BuildKit's --secret: a CLI with the buildx plugin, or Debian's
# 20.10 CLI with DOCKER_BUILDKIT=1 (a newer CLI without buildx refuses BuildKit builds).
pick_cli() {
    local cli
    for cli in "$(command -v docker || true)" /usr/bin/docker; do
        [[ -n "$cli" && -x "$cli" ]] || continue
        if DOCKER_BUILDKIT=1 "$cli" build --help 2>/dev/null | grep -q -- "--secret"; then echo "$cli"; return 0; fi
    done
    return 1
}

CLI="$(pick_cli || true)"
if [[ -n "$CLI" ]] && "$CLI" info >/dev/null 2>&1; then echo "$CLI"; exit 0; fi

bash "$REPO/scripts/system-packages.sh" docker >&2
CLI="$(pick_cli)" || { echo "[docker] no docker CLI here builds with BuildKit (install the buildx plugin)" >&2; exit 1; }
if ! "$CLI" info >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]] || ! command -v dockerd >/dev/null; then
        echo "[docker] no Docker engine answers ($CLI info) and this user cannot start one: start Docker" >&2
        exit 1
    fi
    echo "[docker] starting dockerd --iptables=false --bridge=none (log: $LOG)" >&2
    setsid nohup dockerd --iptables=false --bridge=none >>"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 60); do "$CLI" info >/dev/null 2>&1 && break; sleep 1; done
    "$CLI" info >/dev/null 2>&1 || { echo "[docker] dockerd did not answer within 60 s; log: $LOG" >&2; exit 1; }
fi
echo "$CLI"
