#!/usr/bin/env bash
# Set up Membrane on this machine: Debian packages, npm packages, the native
# addon, the BPF objects and the TypeScript build. Idempotent: a second run only
# does what is missing or out of date.
#   scripts/setup.sh            what the agent, the CNI plugin and the CLI need
#   scripts/setup.sh --lab      plus what the multi-node lab uses (etcd)
#   scripts/setup.sh --test     plus what the tests and benchmarks use (podman, containerd, etcd, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_lab=0
[ "${1:-}" = "--test" ] && want_test=1
[ "${1:-}" = "--lab" ] && want_lab=1

pkgs=(clang llvm libbpf-dev libelf-dev zlib1g-dev linux-libc-dev libc6-dev iproute2 bpftool make gcc g++ python3 util-linux iputils-ping)
if [ "$want_test" = 1 ]; then
  pkgs+=(iperf3 sockperf podman runc containerd busybox-static golang-go golang-github-appc-cni-dev iptables chromium strace curl wrk etcd-server etcd-client containernetworking-plugins dnsmasq-base bind9-dnsutils)
fi
if [ "$want_lab" = 1 ]; then
  pkgs+=(etcd-server etcd-client)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs: where pinned maps and links live.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf
fi

# npm packages (lockfile-exact); re-run only when the lockfile changed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

bash scripts/build.sh
echo "setup: done"
