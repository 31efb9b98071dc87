#!/usr/bin/env bash
# Build everything from source: BPF objects, native addon, generated codecs,
# TypeScript, and the self-contained CNI plugin. Incremental and idempotent.
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

node scripts/bundle-cni.js
node scripts/bundle-ui.js
chmod +x bin/membrane-cni bin/membrane bin/membrane-agent bin/membrane-proxy
