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

# The CNI plugin is one self-contained file: it can be copied or linked into a
# runtime's plugin directory and needs nothing else (only node itself).
node -e '
require("esbuild").buildSync({
  entryPoints: ["src/cni/main.ts"], bundle: true, platform: "node", target: "node20",
  outfile: "bin/membrane-cni", banner: { js: "#!/usr/bin/env node" }, logLevel: "error",
});'
chmod +x bin/membrane-cni bin/membrane bin/membrane-agent
