#!/usr/bin/env bash
# Prints the base image to build hvdtrain's CPU image on, making one when the registry is out of reach.
#   bash scripts/docker-base.sh DOCKER_CLI [IMAGE]
# IMAGE (default python:3.11-slim-bookworm, the official base) is used when the engine has it or can
# pull it. Where no registry answers (an air-gapped build machine, this project's CI), the same Debian
# release is made from Debian's own packages with debootstrap and imported as hvdtrain-base:bookworm:
# Python 3.11 with its headers (python3-dev: the slim image ships them, and Horovod's compile needs
# them) and venv. Made once; later builds reuse it.
set -euo pipefail
DOCKER="${1:?usage: docker-base.sh DOCKER_CLI [IMAGE]}"
WANTED="${2:-python:3.11-slim-bookworm}"
LOCAL=hvdtrain-base:bookworm
MIRROR="${HVDTRAIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

have() { $DOCKER image inspect "$1" >/dev/null 2>&1; }

if have "$WANTED"; then echo "$WANTED"; exit 0; fi
if pull_error="$($DOCKER pull -q "$WANTED" 2>&1 >/dev/null)"; then echo "$WANTED"; exit 0; fi
if have "$LOCAL"; then echo "$LOCAL"; exit 0; fi

echo "[image] cannot pull $WANTED (${pull_error##*: }); making $LOCAL from Debian's packages" >&2
command -v debootstrap >/dev/null || { echo "[image] debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
LOG="${TMPDIR:-/tmp}/hvdtrain-debootstrap.log"
if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python3-dev,ca-certificates \
        bookworm "$ROOT" "$MIRROR" >"$LOG" 2>&1; then
    echo "[image] debootstrap of Debian bookworm from $MIRROR failed; log: $LOG" >&2
    tail -n 5 "$LOG" | sed 's/^/[image]   | /' >&2
    exit 1
fi
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | $DOCKER import --change 'CMD ["python3"]' - "$LOCAL" >/dev/null
echo "$LOCAL"
