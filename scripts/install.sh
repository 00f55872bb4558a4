#!/usr/bin/env bash
# Install everything gpufleet and its test suite need on a Debian 12 machine, as root. Safe to run again.
#   Debian packages: Docker engine, debootstrap + dpkg-dev + gnupg (testbed image and stand-in repository),
#   openssh-client, prometheus/promtool, git, python3 venv tooling.
#   Starts dockerd in the background when no engine answers; raises fs.inotify limits for many systemd hosts;
#   creates .venv/ and installs gpufleet into it with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/install.sh: run as root (it installs Debian packages and starts dockerd)" >&2
    exit 1
fi

PKGS=(docker.io debootstrap dpkg-dev gnupg openssh-client prometheus git curl ca-certificates
      python3 python3-pip python3-venv util-linux procps)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl start docker || true
    fi
fi
if ! docker info >/dev/null 2>&1; then
    echo "install: starting dockerd in the background (log: /var/log/gpufleet-dockerd.log)"
    nohup dockerd >/var/log/gpufleet-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "install: dockerd did not answer within 60 s" >&2; tail -5 /var/log/gpufleet-dockerd.log >&2; exit 1; }
fi

# systemd in every testbed host takes inotify instances; the default 128 stops new hosts at about 26.
sysctl -q -w fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=1048576 \
    || echo "install: warning: could not raise fs.inotify limits (large testbeds may fail to start)" >&2

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import provision, paramiko, pytest, yaml" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.gpufleet-installed ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch .venv/.gpufleet-installed
fi
# an editable install compiles nothing; without bytecode every command compiles ~50 modules again (~80 ms)
.venv/bin/python -m compileall -q provision agent >/dev/null
echo "install: ready ($(docker version --format 'docker {{.Server.Version}}'), $(.venv/bin/python --version))"
