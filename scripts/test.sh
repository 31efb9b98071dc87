#!/usr/bin/env bash
# Set up (idempotent) and run every test tier:
#   unit      pure TypeScript
#   datapath  BPF programs run on crafted packets (BPF_PROG_TEST_RUN), netlink against the kernel
#   e2e       agent + CNI plugin called as a runtime calls it, real traffic between network namespaces
#   clients   podman and containerd (CRI) driving the plugin
# Usage: scripts/test.sh [tier...]   (default: all tiers)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
tiers=("$@")
[ "${#tiers[@]}" -gt 0 ] || tiers=(unit datapath e2e clients)
dirs=()
for t in "${tiers[@]}"; do
  [ -d "dist/test/$t" ] && dirs+=("dist/test/$t/")
done
mkdir -p test-artifacts
exec node --test --test-concurrency=1 "${dirs[@]}"
