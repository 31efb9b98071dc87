#!/usr/bin/env bash
# A Membrane cluster on this machine: N nodes (network namespaces, each with
# its own agent), an underlay bridge, etcd; pods on every node, cross-node
# connectivity and a policy at work.
#   scripts/lab.sh up [--nodes N] [--pods N] [--no-demo]
#   scripts/lab.sh status
#   scripts/lab.sh down          removes everything the lab created
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "up" ]; then
  bash scripts/setup.sh --lab
fi
exec node dist/test/helpers/lab-cli.js "$@"
