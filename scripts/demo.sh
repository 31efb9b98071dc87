#!/usr/bin/env bash
# Set up Membrane and run the demo: the agent on this host (default flags), three
# pods (network namespaces) attached through the CNI plugin, their connectivity,
# and what the agent and the kernel maps say about them. Idempotent: a re-run
# replaces the previous demo pods.
#   scripts/demo.sh          set up and run
#   scripts/demo.sh --clean  remove the demo pods and stop the demo agent
#   scripts/demo.sh --purge  also remove the node's devices, pinned maps and agent state
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

if [ "${1:-}" = "--clean" ] || [ "${1:-}" = "--purge" ]; then
  if bin/membrane status >/dev/null 2>&1; then
    clean_pods
    bin/membrane delete -f examples/demo-policy.yaml >/dev/null 2>&1 || true
  fi
  for p in "${PODS[@]}"; do [ -e /run/netns/$p ] && ip netns del $p; done
  if [ -f /var/run/membrane/agent.pid ]; then
    pid=$(cat /var/run/membrane/agent.pid)
    kill "$pid" 2>/dev/null || true
    rm -f /var/run/membrane/agent.pid
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$1" = "--purge" ]; then
    bin/membrane-agent --cleanup
    echo "demo purged: pods, agent, devices, pinned maps and state removed"
  else
    echo "demo removed (the agent's devices and pinned maps stay; the agent restores them on start)"
  fi
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
bin/membrane delete -f examples/demo-policy.yaml >/dev/null 2>&1 || true
echo
echo "== pod objects (labels give each pod its security identity)"
bin/membrane apply -f examples/demo-pods.yaml
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
echo "== TCP to demo-a:8080"
ip netns exec demo-a node dist/test/helpers/netkit.js tcp-echo 8080 >/dev/null &
srv=$!
sleep 0.5
tcp() { ip netns exec $1 node dist/test/helpers/netkit.js tcp-req ${IP[demo-a]} 8080 "hello from $1" 1500 2>&1 || true; }
echo "demo-b: $(tcp demo-b)"
echo "demo-c: $(tcp demo-c)"

echo
echo "== policy: only app=client may reach app=web on port http (examples/demo-policy.yaml)"
bin/membrane apply -f examples/demo-policy.yaml
echo "demo-b (app=client): $(tcp demo-b)"
echo "demo-c (app=other):  $(tcp demo-c)"
echo
bin/membrane policy trace --src demo/demo-c --dst demo/demo-a --dport 8080/TCP
echo
echo "== membrane bpf policy get (demo-a's policy map in the kernel)"
bin/membrane bpf policy get "$(bin/membrane endpoint list -o json | node -e 'console.log(JSON.parse(require("fs").readFileSync(0,"utf8")).find(e=>e.podName==="demo-a").id)')"
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
echo "The agent, the demo pods and the policy stay: try 'ip netns exec demo-b ping ${IP[demo-a]}',"
echo "'bin/membrane delete -f examples/demo-policy.yaml', 'bin/membrane policy get'."
echo "Remove them with: scripts/demo.sh --clean"
