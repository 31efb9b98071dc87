#!/usr/bin/env bash
# Set up Membrane and run the demo: the agent on this host (default flags), three
# pods (network namespaces) attached through the CNI plugin, their connectivity,
# and what the agent and the kernel maps say about them. Idempotent: a re-run
# replaces the previous demo pods.
#   scripts/demo.sh          set up and run
#   scripts/demo.sh --clean  remove the demo pods and stop the demo agent
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SOCK=/var/run/membrane/membrane.sock
PODS=(demo-a demo-b demo-c)
export MEMBRANE_SOCKET=$SOCK
conf=$(cat examples/10-membrane.conflist | node -e 'const c=JSON.parse(require("fs").readFileSync(0,"utf8")); const p=c.plugins[0]; console.log(JSON.stringify({cniVersion:c.cniVersion,name:c.name,...p}))')

cni() { # cni COMMAND POD
  CNI_COMMAND=$1 CNI_CONTAINERID="$2-container" CNI_NETNS=/run/netns/$2 CNI_IFNAME=eth0 \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" CNI_PATH=$ROOT/bin \
    bin/membrane-cni <<<"$conf"
}

clean_pods() {
  for p in "${PODS[@]}"; do
    if [ -e /run/netns/$p ]; then cni DEL $p >/dev/null || true; ip netns del $p; fi
  done
}

if [ "${1:-}" = "--clean" ]; then
  clean_pods
  [ -f /var/run/membrane/agent.pid ] && kill "$(cat /var/run/membrane/agent.pid)" 2>/dev/null || true
  echo "demo removed (the agent's devices and pinned maps stay; the agent restores them on start)"
  exit 0
fi

bash scripts/setup.sh

mkdir -p /var/run/membrane
if ! bin/membrane status >/dev/null 2>&1; then
  echo "== starting membrane-agent (log: /var/run/membrane/agent.log)"
  nohup bin/membrane-agent >>/var/run/membrane/agent.log 2>&1 &
  echo $! >/var/run/membrane/agent.pid
  for _ in $(seq 100); do bin/membrane status >/dev/null 2>&1 && break; sleep 0.1; done
fi
bin/membrane status

clean_pods
echo
echo "== attaching pods through the CNI plugin"
declare -A IP
for p in "${PODS[@]}"; do
  ip netns add $p
  ip -n $p link set lo up
  res=$(cni ADD $p)
  IP[$p]=$(node -e 'console.log(JSON.parse(process.argv[1]).ips[0].address.split("/")[0])' "$res")
  echo "$p: ${IP[$p]}"
done

echo
echo "== connectivity (ICMP)"
for s in "${PODS[@]}"; do
  for d in "${PODS[@]}"; do
    [ $s = $d ] && continue
    if ip netns exec $s ping -c1 -W1 ${IP[$d]} >/dev/null; then r=OK; else r=FAIL; fi
    echo "$s -> $d (${IP[$d]}): $r"
  done
  if ping -c1 -W1 ${IP[$s]} >/dev/null; then r=OK; else r=FAIL; fi
  echo "host -> $s: $r"
done

echo
echo "== TCP demo-a -> demo-b:8080"
ip netns exec demo-b node dist/test/helpers/netkit.js tcp-echo 8080 >/dev/null &
srv=$!
sleep 0.5
ip netns exec demo-a node dist/test/helpers/netkit.js tcp-req ${IP[demo-b]} 8080 hello-membrane || true
kill $srv 2>/dev/null || true

echo
echo "== membrane endpoint list"
bin/membrane endpoint list
echo
echo "== membrane bpf endpoint list"
bin/membrane bpf endpoint list
echo
echo "== membrane bpf ipcache list"
bin/membrane bpf ipcache list
echo
echo "== membrane bpf metrics list"
bin/membrane bpf metrics list
echo
echo "The agent and the demo pods keep running: try 'ip netns exec demo-a ping ${IP[demo-c]}'."
echo "Remove them with: scripts/demo.sh --clean"
