/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Membrane datapath map layouts. This header is the single definition of every
 * map key and value; the TypeScript codecs in src/datapath/maps.gen.ts are
 * generated from the BTF of the compiled objects (scripts/gen-codecs.js) and a
 * test checks they agree.
 *
 * Addresses are always {family, 16 bytes}: IPv4 uses the first 4 bytes of addr,
 * the rest zero. Family values are MB_FAMILY_IPV4 / MB_FAMILY_IPV6.
 *
 * Global maps are pinned by name under the agent's --bpf-root (LIBBPF_PIN_BY_NAME),
 * so every object loaded by one agent shares them and two agents never do.
 */
#ifndef MEMBRANE_MAPS_H
#define MEMBRANE_MAPS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define MB_FAMILY_IPV4 4
#define MB_FAMILY_IPV6 6

#define MB_MAX_ENDPOINTS 4096 /* endpoint ids 1..4095 */
#define MB_POLICY_MAX_ENTRIES 16384 /* entries of one endpoint's policy map */

/*
 * ---- per-endpoint configuration (mb_ep_config[ep_id], mb_lxc[ifindex] -> ep_id) ----
 * One loaded bpf_lxc.o serves every endpoint: from_container finds its
 * endpoint by the host-side veth's ifindex (mb_lxc), policy_ingress by the
 * endpoint id its caller passes in skb->cb[MB_CB_DST_EP]. An identity change
 * is a write here, never a program reload.
 */
#define EP_CFG_F_IPV4 1          /* ipv4 is set */
#define EP_CFG_F_IPV6 2          /* ipv6 is set */
#define EP_CFG_F_NO_POLICY 4     /* skip conntrack and policy (a feature switch; the agent never sets it) */
#define EP_CFG_F_ADDR_POLICY 8   /* the policy names address blocks: also look peers up in mb_ipblock */

struct ep_config {
	__u32 ep_id;          /* endpoint id, 1..4095 (0: slot unused) */
	__u32 sec_id;         /* the endpoint's security identity */
	__u32 ifindex;        /* host-side veth ifindex (bpf_redirect_peer target) */
	__u32 flags;          /* EP_CFG_F_* */
	__u8 ipv4[4];
	__u8 ipv6[16];
	__u8 mac[6];          /* pod-side (container) MAC */
	__u8 node_mac[6];     /* host-side veth MAC: the pod's router MAC */
	__u16 policy_epoch;   /* bumped by the agent whenever the endpoint's policy map changes
			       * (1..65535): conntrack entries remember the epoch their verdict
			       * was taken under (ct_value.policy_epoch); 0 = never cache */
	__u16 pad;
};

/* ---- endpoints: local endpoint address -> where and who it is ---- */
struct endpoint_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

#define ENDPOINT_F_HOST 1 /* the address belongs to the node itself */

struct endpoint_info {
	__u32 ifindex;     /* host-side veth */
	__u16 ep_id;
	__u16 pad;
	__u32 flags;       /* ENDPOINT_F_* */
	__u32 sec_id;      /* security identity */
	__u8 mac[6];       /* pod-side MAC */
	__u8 node_mac[6];  /* host-side veth MAC (the pod's router MAC) */
};

/* ---- ipcache: address/prefix -> security identity (and tunnel endpoint) ---- */
struct ipcache_key {
	__u32 prefixlen;   /* LPM prefix: 32 (family+pad) + CIDR bits */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

#define IPCACHE_F_HAS_TUNNEL 1

struct ipcache_value {
	__u32 sec_id;
	__u8 tunnel_family;
	__u8 flags;        /* IPCACHE_F_* */
	__u16 pad;
	__u8 tunnel_addr[16];
};

/*
 * ---- per-endpoint policy (LPM on identity, direction, protocol, port) ----
 * Stored entries always fix identity and direction (prefixlen >= 40):
 *   40       any protocol, any port        {id, dir, 0, 0}
 *   48       protocol fixed, any port      {id, dir, proto, 0}
 *   48 + n   port prefix: the n high bits of the network-order dport
 *            (e.g. 8080-8087 = {id, dir, TCP, 8080} / 61)
 *   64       exact port
 * ICMP (protocol 1): dport = bpf_htons(icmp type), i.e. key bytes {0, type};
 * a type is a /64 entry, any type /48. (The code is not matched.)
 * The datapath looks up all 64 bits twice: the remote identity, then identity
 * 0 (L3 wildcard). A deny hit in either -> DROP_POLICY_DENY; else a hit
 * allows (counted on the exact-identity hit if any, else on the wildcard);
 * no hit -> DROP_POLICY. An empty map denies everything: a direction that is
 * not enforced needs the allow-all entry {0, dir, 0, 0} / 40.
 */
struct policy_key {
	__u32 prefixlen;   /* 40..64 bits of the fields below (see above) */
	__u32 sec_id;      /* remote identity, host byte order; 0 = any (wildcard entry) */
	__u8 egress;       /* 0 ingress, 1 egress */
	__u8 protocol;     /* IPPROTO_*, 0 = any */
	__be16 dport;      /* network byte order; 0 = any (ICMP: bpf_htons(type)) */
};

#define POLICY_F_DENY 1

/*
 * Packet marks (skb->mark) for the L7 proxy (lib/proxy.h; the agent installs
 * `ip rule fwmark MB_MARK_TO_PROXY/MB_MARK_MASK lookup 2004` with
 * `local 0.0.0.0/0 dev lo table 2004`, src/proxy/manager.ts):
 *   MB_MARK_TO_PROXY    the datapath assigned the packet a proxy socket
 *                       (bpf_sk_assign); the stack delivers it locally
 *   MB_MARK_FROM_PROXY  SO_MARK of the proxy's upstream sockets: not
 *                       redirected again (the proxy enforced every L7 rule
 *                       on the way), and the flow's replies go to the proxy
 * A pod cannot set either: marks are scrubbed when a packet leaves a netns.
 */
#define MB_MARK_MASK 0x0f00
#define MB_MARK_TO_PROXY 0x0200
#define MB_MARK_FROM_PROXY 0x0a00

struct policy_value {
	__u64 packets;
	__u64 bytes;
	__be16 proxy_port; /* network byte order; 0 = no L7 redirect */
	__u8 flags;        /* POLICY_F_* */
	__u8 prefix_len;   /* prefix length of the rule that produced this entry */
	__u32 pad;
};

/*
 * ---- connection tracking (bpf/lib/conntrack.h has the algorithm) ----
 * One entry per endpoint side of a flow, keyed by the flow's forward tuple
 * (first packet's saddr/daddr/sport/dport, IPv4 in the first 4 address bytes)
 * and flags CT_EGRESS or CT_INGRESS. Tuple ports: TCP/UDP/SCTP ports; ICMP
 * echo request sport = echo id, dport = 0; echo reply sport = 0, dport = id;
 * other ICMP and other protocols 0.
 */
#define CT_EGRESS 0        /* tracked from the endpoint's egress (it opened the flow) */
#define CT_INGRESS 1       /* tracked from the endpoint's ingress (it accepted the flow) */
#define CT_RELATED 2
#define CT_SERVICE 4

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 nexthdr;
	__u8 flags;        /* CT_* */
	__u8 family;
	__u8 pad;
};

#define CT_F_RX_CLOSING 1   /* FIN or RST seen in the reply direction */
#define CT_F_TX_CLOSING 2   /* FIN or RST seen in the forward direction */
#define CT_F_SEEN_NON_SYN 4 /* a TCP segment without SYN seen: established */

/* Lifetimes in seconds, refreshed by every packet of the flow. */
#define CT_LIFETIME_SYN 60       /* TCP, only SYNs seen */
#define CT_LIFETIME_TCP 21600    /* TCP, CT_F_SEEN_NON_SYN */
#define CT_LIFETIME_NONTCP 60
#define CT_LIFETIME_CLOSE 10     /* TCP, CT_F_RX_CLOSING or CT_F_TX_CLOSING */
#define CT_F_PROXY_REDIRECT 8 /* the flow is redirected to the proxy (L7 rules): every packet goes to its socket */
#define CT_F_FROM_PROXY 16    /* the proxy's upstream opened the flow: replies go back to the proxy (lib/proxy.h) */

struct ct_value {
	__u64 tx_packets;  /* tx: the entry's forward direction, rx: its replies */
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 lifetime;    /* absolute expiry, CLOCK_MONOTONIC seconds (bpf_ktime_get_coarse_ns() / 1e9);
			    * expired (treated as absent, to be GC'd) iff lifetime < now */
	__u32 src_sec_id;  /* identity of the remote side at the entry's last policy check */
	__u16 rev_nat_index; /* service flows: mb_lb_revnat index the replies' source is
			      * rewritten to (CT_EGRESS of a pod client, CT_INGRESS of the
			      * backend for host/world clients, CT_SERVICE); bpf/lib/lb.h */
	__u8 tx_flags_seen; /* TCP flags seen (or'ed) in each direction */
	__u8 rx_flags_seen;
	__u8 flags;        /* CT_F_* */
	__u8 pad;
	__u16 policy_epoch; /* the endpoint's policy epoch when the forward direction's verdict
			     * was last taken (0: never cached): while it is the endpoint's
			     * current epoch and src_sec_id the remote identity, established
			     * packets skip the policy lookups (bpf_lxc.c) */
	__u32 last_report; /* seconds (as lifetime) of the flow's last trace report, for
			    * MONITOR_AGG_LOW (bpf/lib/trace.h); set to the creation time */
	__u32 backend_id;  /* CT_SERVICE entries: the backend chosen for the flow */
};

/* ---- services: load balancing (frontends, backend slots, backends, reverse NAT) ---- */
#define LB_SVC_F_NODEPORT 1     /* frontend is a NodePort (node address, port 30000-32767) */
#define LB_SVC_F_AFFINITY 2     /* sessionAffinity ClientIP: timeout in slot 0's backend_id */
#define LB_SVC_F_MAGLEV 4       /* slots 1..count are a Maglev lookup table (hash of the 5-tuple) */
#define LB_SVC_F_LOCAL 8        /* externalTrafficPolicy Local: only node-local backends */
#define LB_SVC_F_CLUSTERIP 16

#define LB_MAGLEV_M 1021        /* Maglev table size (prime) */

/*
 * Hairpin: a pod reaching itself through a service has its source SNATed to
 * this address (169.254.42.1, host byte order here) so the reply leaves the pod
 * again; bpf/lib/lb.h. Ingress policy sees it as the host (MB_ID_HOST).
 */
#define LB_HAIRPIN_IPV4 0xa9fe2a01

/*
 * Key of mb_lb_services. slot 0 is the frontend's master entry (count,
 * rev_nat_index, flags); slots 1..count hold backend ids. Random selection
 * picks slot (prandom % count) + 1; Maglev picks (hash % count) + 1 with
 * count = LB_MAGLEV_M (hash: lb4_hash in bpf/lib/lb.h). A frontend with
 * count 0 has no backend: new flows are rejected at once with
 * DROP_NO_SERVICE (from a pod: an ICMP port unreachable back to it).
 * addr: IPv4 in the first 4 bytes (network order), dport network order,
 * slot host order, family MB_FAMILY_IPV4, scope 0 (the datapath only looks
 * up scope 0), pad 0. NodePort frontends (node address, LB_SVC_F_NODEPORT)
 * are only served by from_netdev; every frontend is served from pods
 * (from_container) and the host (from_host).
 */
struct lb_service_key {
	__u8 addr[16];
	__be16 dport;
	__u16 slot;
	__u8 proto;
	__u8 family;
	__u8 scope;             /* 0 = external, 1 = internal */
	__u8 pad;
};

struct lb_service_value {
	__u32 backend_id;       /* slot > 0: backend id; slot 0: affinity timeout (s) */
	__u16 count;            /* slot 0: number of backend slots */
	__u16 rev_nat_index;    /* slot 0: reverse NAT entry, also the frontend's id */
	__u8 flags;             /* slot 0: LB_SVC_F_* */
	__u8 pad[3];
};

#define LB_BACKEND_ACTIVE 0
#define LB_BACKEND_TERMINATING 1  /* no new flows; established ones keep it */

struct lb_backend {
	__u8 addr[16];
	__be16 port;            /* network order; 0 = the frontend's port */
	__u8 proto;
	__u8 flags;             /* LB_BACKEND_* */
	__u8 family;
	__u8 pad[3];
};

/* Reverse NAT: what a reply's source is rewritten to (the frontend). */
struct lb_revnat {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

struct lb_affinity_key {
	__u8 client[16];
	__u16 rev_nat_index;
	__u8 family;
	__u8 pad;
};

struct lb_affinity_value {
	__u32 last_used;        /* CLOCK_MONOTONIC seconds */
	__u32 backend_id;
};

/*
 * Socket-level LB (bpf_sock.c): what a connected/sending socket's backend
 * stands for, so recvmsg/getpeername can show the frontend again. Keyed by
 * the socket cookie and the backend address (IPv4 in the first 4 bytes) and
 * port (network order); LRU, written by connect4/sendmsg4.
 */
struct lb_sock_revnat_key {
	__u64 cookie;
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

struct lb_sock_revnat_value {
	__u8 addr[16];          /* the frontend */
	__be16 port;
	__u16 rev_nat_index;
	__u8 family;
	__u8 pad[3];
};

/*
 * ---- NodePort SNAT towards backends on other nodes (bpf/lib/snat.h) ----
 * A NodePort flow whose backend lives on another node leaves this node with
 * its source rewritten to the node address it arrived on and a port chosen
 * here, so the backend's reply comes back (over the overlay) to be reversed.
 * Two entries per flow, keyed by the tuple as seen on the wire:
 *   SNAT_OUT {client, backend, client port, backend port} -> {node addr, nat port}
 *   SNAT_IN  {backend, node addr, backend port, nat port} -> {client, client port, rev_nat}
 * Addresses and ports network order; LRU (the oldest flows make room).
 */
#define SNAT_OUT 0
#define SNAT_IN 1
#define SNAT_PORT_MIN 32768
#define SNAT_PORT_SPAN 28232   /* 32768..60999, the kernel's default ephemeral range */

struct snat4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;                /* SNAT_OUT / SNAT_IN */
	__u16 pad;
};

struct snat4_value {
	__be32 addr;             /* OUT: the node address; IN: the client */
	__be16 port;             /* OUT: the nat port; IN: the client's port */
	__u16 rev_nat_index;     /* IN: the frontend to reverse the backend's source to */
	__u32 created;           /* CLOCK_MONOTONIC seconds */
};

/*
 * ---- metrics: (reason, direction) -> packets, bytes; per CPU ----
 * A per-CPU array indexed by METRIC_INDEX(reason, dir): the lookup is inlined
 * by the verifier (no hashing on every packet).
 */
#define METRIC_DIR_INGRESS 1
#define METRIC_DIR_EGRESS 2
#define METRIC_DIR_SERVICE 3
#define METRIC_INDEX(reason, dir) (((__u32)(reason) << 2) | ((__u32)(dir) & 3))
#define METRIC_ENTRIES 1024   /* 256 reasons x 4 directions */

struct metrics_value {
	__u64 count;
	__u64 bytes;
};

/* ---- node configuration, written by the agent at start (ARRAY, 1 entry) ---- */
struct node_config {
	__u32 host_ifindex;   /* host side of the host device pair (carries the router address) */
	__u32 net_ifindex;    /* peer of host_ifindex: pod->host traffic is sent out of it */
	__u8 host_mac[6];
	__u8 net_mac[6];
	__u8 router_ipv4[4];
	__u8 router_ipv6[16];
	__u32 flags;
	__u32 tunnel_ifindex; /* the overlay's VXLAN device (collect-metadata); 0: no overlay (one node) */
};

/* ---- events (ring buffer) ---- */
#define EVENT_DROP 1
#define EVENT_DEBUG 2
#define EVENT_TRACE 4
#define EVENT_POLICY_VERDICT 5

#define EVENT_CAPTURE_LEN 128

struct event_hdr {
	__u8 type;         /* EVENT_* */
	__u8 subtype;      /* drop reason / observation point */
	__u16 source;      /* endpoint id */
	__u32 hash;
};

struct drop_event {
	struct event_hdr hdr;
	__u32 src_label;
	__u32 dst_label;
	__u16 dst_id;
	__u16 line;
	__u8 file;
	__s8 ext_error;
	__u16 pad;
	__u32 ifindex;
	__u32 orig_len;
	__u16 cap_len;
	__u16 pad2;
	__u8 data[EVENT_CAPTURE_LEN];
};

/* Trace observation points (trace_event hdr.subtype), as users know them. */
#define TRACE_TO_LXC 0       /* delivered to an endpoint */
#define TRACE_TO_PROXY 1
#define TRACE_TO_HOST 2
#define TRACE_TO_STACK 3     /* handed to the node's stack (host or beyond) */
#define TRACE_TO_OVERLAY 4
#define TRACE_FROM_LXC 5     /* left an endpoint */
#define TRACE_FROM_PROXY 6
#define TRACE_FROM_HOST 7    /* came from the node's stack towards an endpoint */
#define TRACE_FROM_STACK 8
#define TRACE_FROM_OVERLAY 9
#define TRACE_FROM_NETWORK 10
#define TRACE_TO_NETWORK 11

/* Connection tracking state of a traced packet (trace_event.ct_state). */
#define TRACE_CT_NEW 0
#define TRACE_CT_ESTABLISHED 1
#define TRACE_CT_REPLY 2
#define TRACE_CT_RELATED 3
#define TRACE_CT_UNKNOWN 255 /* not tracked (e.g. ARP, policy not enforced at this point) */

struct trace_event {
	struct event_hdr hdr;  /* type EVENT_TRACE, subtype TRACE_* */
	__u32 src_label;
	__u32 dst_label;
	__u16 dst_id;          /* destination endpoint id, 0 if not local */
	__u8 ct_state;         /* TRACE_CT_* */
	__u8 pad;
	__u32 ifindex;
	__u32 orig_len;
	__u16 cap_len;
	__u16 pad2;
	__u8 data[EVENT_CAPTURE_LEN];
};

#define VERDICT_ALLOW 0
#define VERDICT_DENY 1     /* with drop reason in policy_verdict_event.drop_reason */

#define MATCH_NONE 0        /* no entry matched (default deny) */
#define MATCH_L3_ONLY 1     /* identity, any port */
#define MATCH_L3_L4 2       /* identity and port/protocol */
#define MATCH_L4_ONLY 3     /* any identity (0), port/protocol */
#define MATCH_ALL 4         /* any identity, any port */

struct policy_verdict_event {
	struct event_hdr hdr;  /* type EVENT_POLICY_VERDICT, subtype 0 */
	__u32 remote_label;
	__u8 verdict;          /* VERDICT_* */
	__u8 drop_reason;      /* 0, DROP_POLICY or DROP_POLICY_DENY */
	__u8 dir;              /* METRIC_DIR_INGRESS / METRIC_DIR_EGRESS */
	__u8 match_type;       /* MATCH_* */
	__u16 dst_port;        /* host order */
	__u8 proto;
	__u8 audited;
	__u32 ifindex;
	__u32 orig_len;
	__u16 cap_len;
	__u16 pad;
	__u8 data[EVENT_CAPTURE_LEN];
};

/*
 * Monitor configuration (mb_monitor[0]), written by the agent. Each program
 * reads it once per packet; all zero (the state of a fresh map) = drops only.
 * What is emitted where, and the aggregation rules: bpf/lib/trace.h.
 */
#define MONITOR_AGG_NONE 0    /* a trace event for every packet */
#define MONITOR_AGG_LOW 1     /* first packet of a flow, TCP flag changes, periodic report */
#define MONITOR_AGG_MEDIUM 2  /* first packet of a flow, TCP flag changes */
#define MONITOR_AGG_MAX 3     /* first packet of a flow only */
#define MONITOR_F_TRACE 1     /* emit trace events */
#define MONITOR_F_VERDICT 2   /* emit policy verdict events */

struct monitor_config {
	__u32 flags;           /* MONITOR_F_*; drops are always reported */
	__u32 aggregation;     /* MONITOR_AGG_* */
	__u32 report_interval; /* seconds, for MONITOR_AGG_LOW (0: every packet) */
	__u32 pad;
};

/* Drop reasons (positive codes, as users know them) */
#define DROP_INVALID_SMAC 130
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_CT_UNKNOWN_PROTO 137
#define DROP_UNKNOWN_L3 139
#define DROP_MISSED_TAIL_CALL 140
#define DROP_WRITE_ERROR 141
#define DROP_UNKNOWN_L4 142
#define DROP_UNROUTABLE 151
#define DROP_CSUM_L3 153
#define DROP_CSUM_L4 154
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_UNSUPPORTED_L2 166
#define DROP_NO_FIB 169
#define DROP_NO_TUNNEL_ENDPOINT 160 /* the ipcache names a tunnel endpoint but the node has no overlay */
#define DROP_INVALID_IDENTITY 171   /* overlay: the VNI is not a security identity that may be on the wire */
#define DROP_UNKNOWN_SENDER 172     /* overlay: the inner source is not hosted by the node that sent the packet */
#define DROP_PROXY_LOOKUP_FAILED 178  /* redirected to the proxy, but no proxy socket (proxy down): fail closed */
#define DROP_PROXY_SET_FAILED 179     /* bpf_sk_assign refused the proxy's socket */
#define DROP_NO_TUNNEL_KEY 190      /* overlay: a packet without tunnel metadata on the VXLAN device */
#define DROP_NAT_NO_PORT 191        /* NodePort to another node: no free SNAT port */
#define DROP_POLICY_DENY 181
#define DROP_TTL_EXCEEDED 196
#define DROP_EP_NOT_READY 203

/* ---- map definitions ---- */
#ifndef MB_NO_MAP_DEFS

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65535);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRIC_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_node SEC(".maps");

/*
 * Address blocks (Kubernetes NetworkPolicy ipBlock): prefix -> an identity
 * that stands for "this address", whatever identity the address has in the
 * ipcache (pods and nodes included). LPM with the ipcache's key layout. An
 * endpoint whose policy names such identities (EP_CFG_F_ADDR_POLICY) looks the
 * peer's address up here when its identity found no policy entry.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ipblock SEC(".maps");

/* Endpoint configuration by endpoint id (an unused slot has ep_id 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_config);
	__uint(max_entries, MB_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ep_config SEC(".maps");

/* Host-side veth ifindex -> endpoint id (from_container's "who am I"). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MB_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lxc SEC(".maps");

/*
 * Each endpoint's policy map (LPM trie, layout above), reached by endpoint id.
 * The agent creates one inner map per endpoint with exactly this shape and
 * pins it at <root>/endpoints/<id>/policy. An empty slot denies everything.
 */
struct mb_policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, MB_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/*
 * clang emits only a forward declaration for types an inner map definition
 * names; these anchors put the full layouts into the object's BTF (libbpf
 * needs the sizes). Never read.
 */
volatile const struct policy_key mb_btf_policy_key;
volatile const struct policy_value mb_btf_policy_value;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, MB_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct mb_policy_inner);
} mb_policy_maps SEC(".maps");

/* Tail calls into each endpoint's ingress-policy program, keyed by endpoint id. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, MB_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_call_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb_revnat);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct snat4_key);
	__type(value, struct snat4_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_sock_revnat_key);
	__type(value, struct lb_sock_revnat_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_monitor SEC(".maps");

/* Events the ring buffer had no room for, per CPU (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events_lost SEC(".maps");

#endif /* MB_NO_MAP_DEFS */
#endif /* MEMBRANE_MAPS_H */
