#!/bin/sh
# gpufleet dev container entrypoint: sshd (keys only) in the background, Jupyter as the non-root user in front.
# The Jupyter token comes from a file mounted read-only at /run/gpufleet/jupyter_token (readable by the user only),
# is passed through the environment of the Jupyter process alone, and is never printed.
set -eu
USER_NAME="${GPUFLEET_DEV_USER:-dev}"
TOKEN_FILE="${GPUFLEET_JUPYTER_TOKEN_FILE:-/run/gpufleet/jupyter_token}"
JUPYTER_PORT="${GPUFLEET_JUPYTER_PORT:-8888}"

STATE=/var/lib/gpufleet-dev
# SSH host keys live in the state folder the host keeps across re-creations (made at the first start only), so a
# re-created container shows its users the same host key; without that folder (an older spec) they are made here.
if [ -d "$STATE/ssh" ]; then
    : > /etc/ssh/sshd_config.d/05-gpufleet-hostkeys.conf
    for t in ed25519 ecdsa rsa; do
        [ -s "$STATE/ssh/ssh_host_${t}_key" ] || ssh-keygen -q -N "" -t "$t" -f "$STATE/ssh/ssh_host_${t}_key"
        echo "HostKey $STATE/ssh/ssh_host_${t}_key" >> /etc/ssh/sshd_config.d/05-gpufleet-hostkeys.conf
    done
    chmod 0700 "$STATE/ssh"
else
    ssh-keygen -A >/dev/null 2>&1
fi
# SSH sessions get the image's PATH (python, pip, torchrun live in /opt/conda/bin in the PyTorch images).
echo "SetEnv PATH=$PATH" > /etc/ssh/sshd_config.d/10-gpufleet-path.conf
mkdir -p /run/sshd
/usr/sbin/sshd -e

if [ ! -s "$TOKEN_FILE" ]; then
    echo "gpufleet-dev: no Jupyter token at $TOKEN_FILE: refusing to start Jupyter without one" >&2
    exec sleep infinity
fi
# Published beyond the host's loopback, Jupyter speaks HTTPS only (the certificate the provisioner made on the host,
# in the state folder): the token never crosses the network in clear.
CERT=""; KEY=""
if [ "${GPUFLEET_JUPYTER_TLS:-0}" = 1 ]; then
    CERT="$STATE/tls/jupyter.crt"; KEY="$STATE/tls/jupyter.key"
    if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
        echo "gpufleet-dev: Jupyter must use TLS here but $CERT is missing: refusing to start Jupyter" >&2
        exec sleep infinity
    fi
fi
if command -v jupyter-lab >/dev/null 2>&1; then APP=lab; else APP=server; fi
exec runuser -u "$USER_NAME" -- sh -c '
    JUPYTER_TOKEN="$(cat "$1")"; export JUPYTER_TOKEN
    set -- "$2" "$3" "$4" "$5"
    if [ -n "$3" ]; then set -- "$1" "$2" --ServerApp.certfile="$3" --ServerApp.keyfile="$4"; else set -- "$1" "$2"; fi
    app=$1 port=$2; shift 2
    exec jupyter "$app" --ip=0.0.0.0 --port="$port" --no-browser --ServerApp.root_dir=/workspace \
        --ServerApp.password="" --ServerApp.allow_remote_access=True "$@"' \
    sh "$TOKEN_FILE" "$APP" "$JUPYTER_PORT" "$CERT" "$KEY"
