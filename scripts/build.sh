#!/usr/bin/env bash
# Build everything from source: BPF objects, native addon, generated codecs,
# TypeScript, and the CNI plugin (a static C program). Incremental and idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/membrane-build.lock
flock 9

make -s -C bpf

addon=native/build/Release/membrane.node
if [ ! -f "$addon" ] || [ -n "$(find native/src native/binding.gyp -newer "$addon" 2>/dev/null | head -1)" ]; then
  echo "build: native addon"
  npx --no-install node-gyp rebuild --directory native --loglevel=error >/dev/null
fi

node scripts/gen-codecs.js
npx --no-install tsc -p tsconfig.json

# bin/membrane-cni: the CNI plugin, a statically linked shim that forwards to the agent
# (native/cni/membrane-cni.c): copyable anywhere, starts in about a millisecond.
cni=bin/membrane-cni
if [ ! -f "$cni" ] || [ native/cni/membrane-cni.c -nt "$cni" ] || ! head -c 4 "$cni" | grep -q ELF; then
  echo "build: CNI plugin"
  gcc -std=gnu11 -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -static -s \
    -o "$cni.tmp" native/cni/membrane-cni.c
  mv -f "$cni.tmp" "$cni"
fi
node scripts/bundle-ui.js
chmod +x bin/membrane-cni bin/membrane bin/membrane-agent bin/membrane-proxy bin/membrane-operator
