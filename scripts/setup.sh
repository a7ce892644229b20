#!/usr/bin/env bash
# Idempotent machine setup: system packages, a virtualenv with Muslin, plugin links.
# Run as root. Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs="iproute2 nftables iptables iputils-ping busybox-static podman runc containernetworking-plugins docker.io etcd-server etcd-client bird2 iperf3 openssl systemd wireguard-go wireguard-tools tcpdump containerd chromium"
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

# The native muslin-cni / muslin-ipam (native/muslin-fwd.c): forwards to muslind without an
# interpreter and execs muslin-{cni,ipam}-py (the Python entry) when no muslind answers.
# After pip, which rewrites the console scripts on every run.
bin="$here/.venv/bin"
for p in cni ipam; do
  f=$([ $p = cni ] && echo main || echo main_ipam)
  printf '#!%s\n# muslin-%s, the Python entry (scripts/setup.sh); native/muslin-fwd.c execs it\nfrom muslin.cni.entry import %s\n%s()\n' \
    "$bin/python3" "$p" "$f" "$f" >"$bin/muslin-$p-py.tmp"
  chmod 755 "$bin/muslin-$p-py.tmp" && mv -f "$bin/muslin-$p-py.tmp" "$bin/muslin-$p-py"
done
src="$here/native/muslin-fwd.c" fwd="$here/.venv/lib/muslin-fwd"
cc=$(command -v cc || command -v gcc || true)
flags=(-O2 -Wall -s "-DMUSLIN_PY_DIR=\"$bin\"")
if [ -z "$cc" ]; then
  echo "no C compiler (cc): muslin-cni and muslin-ipam stay the Python entry (an interpreter start per call)"
else
  if [ ! -x "$fwd" ] || [ "$src" -nt "$fwd" ] || [ "$(cat "$fwd.flags" 2>/dev/null)" != "$cc ${flags[*]}" ]; then
    rm -f "$fwd" "$fwd.flags"
    # static: no dynamic loader at each start (measured in docs/benchmarks.md)
    if "$cc" "${flags[@]}" -static -o "$fwd.tmp" "$src" 2>/dev/null || "$cc" "${flags[@]}" -o "$fwd.tmp" "$src"; then
      mv -f "$fwd.tmp" "$fwd" && echo "$cc ${flags[*]}" >"$fwd.flags"
    fi
  fi
  if [ -x "$fwd" ]; then
    for p in cni ipam; do cp -f "$fwd" "$bin/muslin-$p.tmp" && mv -f "$bin/muslin-$p.tmp" "$bin/muslin-$p"; done
  else
    echo "building native/muslin-fwd.c failed: muslin-cni and muslin-ipam stay the Python entry"
  fi
fi
echo "muslin installed in $here/.venv"
