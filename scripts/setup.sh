#!/usr/bin/env bash
# Idempotent machine setup: system packages, a virtualenv with Muslin, plugin links.
# Run as root. Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs="iproute2 nftables iptables iputils-ping busybox-static podman runc containernetworking-plugins docker.io etcd-server etcd-client bird2 iperf3"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=" $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# A real interpreter, never a pyenv shim: plugins are exec'd once per container operation.
py=$(python3 -c 'import os,sys; print(os.path.realpath(sys.executable))')
if [ ! -x "$here/.venv/bin/python" ]; then
  "$py" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test,bench]"
echo "muslin installed in $here/.venv"
