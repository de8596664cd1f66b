#!/usr/bin/env bash
# System packages the build and the tests need, installed with apt-get when missing.
#   bash scripts/system-packages.sh build   Open MPI: Horovod's MPI controller is compiled when mpicc exists
#   bash scripts/system-packages.sh test    what the tests drive for real (sshd and iproute2 for the test
#                                           hosts, tmux for the console tests, Slurm and munge for the
#                                           Slurm cluster, Java for Spark, Chromium for the
#                                           MLflow dashboard test)
#   bash scripts/system-packages.sh docker  Debian's Docker engine (with its BuildKit CLI), debootstrap (a
#                                           base image without a registry) and docker-compose: make image
# Installs only as root on a machine with apt-get (Debian/Ubuntu, CI); anywhere else it prints one
# line naming what is missing and what that means, and succeeds: the build goes on without MPI, and
# the tests that need the missing parts are skipped, each with its reason.
# Idempotent: nothing is fetched when every command is already there.
set -euo pipefail
GROUP="${1:?usage: system-packages.sh build|test}"

# command:package pairs; a package is installed when its command is missing.
case "$GROUP" in
    build) NEEDS=(mpicc:libopenmpi-dev mpirun:openmpi-bin) ;;
    test)  NEEDS=(/usr/sbin/sshd:openssh-server ssh:openssh-client ip:iproute2 tc:iproute2 tmux:tmux
                  /usr/sbin/slurmctld:slurmctld /usr/sbin/slurmd:slurmd sbatch:slurm-client /usr/sbin/munged:munge
                  java:openjdk-17-jre-headless /usr/bin/chromium:chromium
                  dockerd:docker.io debootstrap:debootstrap docker-compose:docker-compose) ;;
    docker) NEEDS=(dockerd:docker.io debootstrap:debootstrap docker-compose:docker-compose) ;;
    *) echo "[system-packages] unknown group '$GROUP': use build, test or docker" >&2; exit 2 ;;
esac

missing=()
for pair in "${NEEDS[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    why=$([[ $(id -u) -ne 0 ]] && echo "not root" || echo "no apt-get")
    case "$GROUP" in
        build) echo "[system-packages] $why: ${missing[*]} not installed; Horovod is built without MPI (hvdtrain run --mpi unavailable)" ;;
        test)  echo "[system-packages] $why: ${missing[*]} not installed; the tests that need them are skipped" ;;
        docker) echo "[system-packages] $why: ${missing[*]} not installed; make image needs a Docker engine" ;;
    esac
    exit 0
fi
echo "[system-packages] installing ${missing[*]} (apt-get)"
LOG="${TMPDIR:-/tmp}/hvdtrain-apt.log"
export DEBIAN_FRONTEND=noninteractive
# Several installs may run at once (parallel checkouts): wait for dpkg's lock instead of failing.
if ! { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
       apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"; } >"$LOG" 2>&1; then
    echo "[system-packages] apt-get install ${missing[*]} failed; log: $LOG" >&2
    tail -n 10 "$LOG" | sed 's/^/[system-packages]   | /' >&2
    exit 1
fi
