#!/usr/bin/env bash
# Sets up this machine (idempotently) and runs the demo: a network and two sandboxes
# that ping each other, all inside a namespace that plays the host.
#   ./scripts/demo.sh        build it        ./scripts/demo.sh down   remove it
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" >/dev/null
exec "$here/.venv/bin/muslin" demo "${1:-up}"
