#!/bin/sh
# gpufleet dev container entrypoint: sshd (keys only) in the background, Jupyter as the non-root user in front.
# The Jupyter token comes from a file mounted read-only at /run/gpufleet/jupyter_token (readable by the user only),
# is passed through the environment of the Jupyter process alone, and is never printed.
set -eu
USER_NAME="${GPUFLEET_DEV_USER:-dev}"
TOKEN_FILE="${GPUFLEET_JUPYTER_TOKEN_FILE:-/run/gpufleet/jupyter_token}"
JUPYTER_PORT="${GPUFLEET_JUPYTER_PORT:-8888}"

ssh-keygen -A >/dev/null 2>&1
# SSH sessions get the image's PATH (python, pip, torchrun live in /opt/conda/bin in the PyTorch images).
echo "SetEnv PATH=$PATH" > /etc/ssh/sshd_config.d/10-gpufleet-path.conf
mkdir -p /run/sshd
/usr/sbin/sshd -e

if [ ! -s "$TOKEN_FILE" ]; then
    echo "gpufleet-dev: no Jupyter token at $TOKEN_FILE: refusing to start Jupyter without one" >&2
    exec sleep infinity
fi
if command -v jupyter-lab >/dev/null 2>&1; then APP=lab; else APP=server; fi
exec runuser -u "$USER_NAME" -- sh -c '
    JUPYTER_TOKEN="$(cat "$1")"; export JUPYTER_TOKEN
    exec jupyter "$2" --ip=0.0.0.0 --port="$3" --no-browser --ServerApp.root_dir=/workspace \
        --ServerApp.password="" --ServerApp.allow_remote_access=True' sh "$TOKEN_FILE" "$APP" "$JUPYTER_PORT"
