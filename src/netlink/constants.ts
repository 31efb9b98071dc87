/**
 * Netlink / rtnetlink constants (from linux/netlink.h, linux/rtnetlink.h,
 * linux/if_link.h, linux/if_addr.h, linux/neighbour.h, linux/veth.h).
 */

export const NETLINK_ROUTE = 0;

// nlmsghdr
export const NLMSG_HDRLEN = 16;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP_FILTERED = 0x20;
// GET requests
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
// NEW requests
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
// ACK flags (on NLMSG_ERROR)
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

// nlmsgerr extended ack attributes
export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_COOKIE = 3;
export const NLMSGERR_ATTR_POLICY = 4;
export const NLMSGERR_ATTR_MISS_TYPE = 5;
export const NLMSGERR_ATTR_MISS_NEST = 6;

// nlattr
export const NLA_HDRLEN = 4;
export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

// rtnetlink message types
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;
export const RTM_NEWRULE = 32;
export const RTM_DELRULE = 33;
export const RTM_GETRULE = 34;
export const RTM_NEWQDISC = 36;
export const RTM_DELQDISC = 37;
export const RTM_GETQDISC = 38;
export const RTM_NEWTFILTER = 44;
export const RTM_DELTFILTER = 45;
export const RTM_GETTFILTER = 46;

export const MSG_TYPE_NAMES: Record<number, string> = {
  [NLMSG_NOOP]: 'NLMSG_NOOP',
  [NLMSG_ERROR]: 'NLMSG_ERROR',
  [NLMSG_DONE]: 'NLMSG_DONE',
  [NLMSG_OVERRUN]: 'NLMSG_OVERRUN',
  [RTM_NEWLINK]: 'RTM_NEWLINK',
  [RTM_DELLINK]: 'RTM_DELLINK',
  [RTM_GETLINK]: 'RTM_GETLINK',
  [RTM_SETLINK]: 'RTM_SETLINK',
  [RTM_NEWADDR]: 'RTM_NEWADDR',
  [RTM_DELADDR]: 'RTM_DELADDR',
  [RTM_GETADDR]: 'RTM_GETADDR',
  [RTM_NEWROUTE]: 'RTM_NEWROUTE',
  [RTM_DELROUTE]: 'RTM_DELROUTE',
  [RTM_GETROUTE]: 'RTM_GETROUTE',
  [RTM_NEWNEIGH]: 'RTM_NEWNEIGH',
  [RTM_DELNEIGH]: 'RTM_DELNEIGH',
  [RTM_GETNEIGH]: 'RTM_GETNEIGH',
  [RTM_NEWRULE]: 'RTM_NEWRULE',
  [RTM_DELRULE]: 'RTM_DELRULE',
  [RTM_GETRULE]: 'RTM_GETRULE',
  [RTM_NEWQDISC]: 'RTM_NEWQDISC',
  [RTM_DELQDISC]: 'RTM_DELQDISC',
  [RTM_GETQDISC]: 'RTM_GETQDISC',
  [RTM_NEWTFILTER]: 'RTM_NEWTFILTER',
  [RTM_DELTFILTER]: 'RTM_DELTFILTER',
  [RTM_GETTFILTER]: 'RTM_GETTFILTER',
};

export function msgTypeName(type: number): string {
  return MSG_TYPE_NAMES[type] ?? `nlmsg type ${type}`;
}

// address families
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;
export const AF_PACKET = 17;

// struct sizes
export const IFINFOMSG_LEN = 16;
export const IFADDRMSG_LEN = 8;
export const RTMSG_LEN = 12;
export const NDMSG_LEN = 12;
export const FIB_RULE_HDR_LEN = 12;

// net_device flags
export const IFF_UP = 0x1;
export const IFF_BROADCAST = 0x2;
export const IFF_LOOPBACK = 0x8;
export const IFF_POINTOPOINT = 0x10;
export const IFF_RUNNING = 0x40;
export const IFF_NOARP = 0x80;
export const IFF_PROMISC = 0x100;
export const IFF_MULTICAST = 0x1000;
export const IFF_LOWER_UP = 0x10000;

// IFLA_*
export const IFLA_UNSPEC = 0;
export const IFLA_ADDRESS = 1;
export const IFLA_BROADCAST = 2;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_QDISC = 6;
export const IFLA_STATS = 7;
export const IFLA_MASTER = 10;
export const IFLA_TXQLEN = 13;
export const IFLA_OPERSTATE = 16;
export const IFLA_LINKMODE = 17;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_PID = 19;
export const IFLA_IFALIAS = 20;
export const IFLA_GROUP = 27;
export const IFLA_NET_NS_FD = 28;
export const IFLA_EXT_MASK = 29;
export const IFLA_PROMISCUITY = 30;
export const IFLA_NUM_TX_QUEUES = 31;
export const IFLA_NUM_RX_QUEUES = 32;
export const IFLA_CARRIER = 33;
export const IFLA_LINK_NETNSID = 37;
export const IFLA_PROTO_DOWN = 39;
export const IFLA_GSO_MAX_SEGS = 40;
export const IFLA_GSO_MAX_SIZE = 41;
export const IFLA_XDP = 43;
export const IFLA_NEW_NETNSID = 45;
export const IFLA_TARGET_NETNSID = 46;
export const IFLA_MIN_MTU = 50;
export const IFLA_MAX_MTU = 51;

// IFLA_LINKINFO nest
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_INFO_XSTATS = 3;
export const IFLA_INFO_SLAVE_KIND = 4;
export const IFLA_INFO_SLAVE_DATA = 5;

// veth
export const VETH_INFO_PEER = 1;

// vxlan IFLA_INFO_DATA
export const IFLA_VXLAN_ID = 1;
export const IFLA_VXLAN_GROUP = 2;
export const IFLA_VXLAN_LINK = 3;
export const IFLA_VXLAN_LOCAL = 4;
export const IFLA_VXLAN_TTL = 5;
export const IFLA_VXLAN_TOS = 6;
export const IFLA_VXLAN_LEARNING = 7;
export const IFLA_VXLAN_AGEING = 8;
export const IFLA_VXLAN_LIMIT = 9;
export const IFLA_VXLAN_PORT_RANGE = 10;
export const IFLA_VXLAN_PROXY = 11;
export const IFLA_VXLAN_RSC = 12;
export const IFLA_VXLAN_L2MISS = 13;
export const IFLA_VXLAN_L3MISS = 14;
export const IFLA_VXLAN_PORT = 15;
export const IFLA_VXLAN_GROUP6 = 16;
export const IFLA_VXLAN_LOCAL6 = 17;
export const IFLA_VXLAN_UDP_CSUM = 18;
export const IFLA_VXLAN_UDP_ZERO_CSUM6_TX = 19;
export const IFLA_VXLAN_UDP_ZERO_CSUM6_RX = 20;
export const IFLA_VXLAN_REMCSUM_TX = 21;
export const IFLA_VXLAN_REMCSUM_RX = 22;
export const IFLA_VXLAN_GBP = 23;
export const IFLA_VXLAN_REMCSUM_NOPARTIAL = 24;
export const IFLA_VXLAN_COLLECT_METADATA = 25;

// operstate (RFC 2863)
export const OPER_STATES = ['unknown', 'notpresent', 'down', 'lowerlayerdown', 'testing', 'dormant', 'up'] as const;
export type OperState = (typeof OPER_STATES)[number];

// IFA_*
export const IFA_UNSPEC = 0;
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;
export const IFA_BROADCAST = 4;
export const IFA_ANYCAST = 5;
export const IFA_CACHEINFO = 6;
export const IFA_MULTICAST = 7;
export const IFA_FLAGS = 8;
export const IFA_F_SECONDARY = 0x01;
export const IFA_F_NODAD = 0x02;
export const IFA_F_PERMANENT = 0x80;
export const IFA_F_NOPREFIXROUTE = 0x200;

// scopes
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_SITE = 200;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
export const RT_SCOPE_NOWHERE = 255;
export type ScopeName = 'universe' | 'site' | 'link' | 'host' | 'nowhere';
export const SCOPES: Record<ScopeName, number> = {
  universe: RT_SCOPE_UNIVERSE,
  site: RT_SCOPE_SITE,
  link: RT_SCOPE_LINK,
  host: RT_SCOPE_HOST,
  nowhere: RT_SCOPE_NOWHERE,
};
export function scopeName(n: number): string {
  for (const [k, v] of Object.entries(SCOPES)) if (v === n) return k;
  return String(n);
}

// routes
export const RT_TABLE_UNSPEC = 0;
export const RT_TABLE_DEFAULT = 253;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;

export const RTPROT_UNSPEC = 0;
export const RTPROT_REDIRECT = 1;
export const RTPROT_KERNEL = 2;
export const RTPROT_BOOT = 3;
export const RTPROT_STATIC = 4;

export const RTN_UNSPEC = 0;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RTN_BROADCAST = 3;
export const RTN_ANYCAST = 4;
export const RTN_MULTICAST = 5;
export const RTN_BLACKHOLE = 6;
export const RTN_UNREACHABLE = 7;
export const RTN_PROHIBIT = 8;
export const RTN_THROW = 9;
export const RTN_NAT = 10;
export const RTN_NAMES = [
  'unspec', 'unicast', 'local', 'broadcast', 'anycast', 'multicast',
  'blackhole', 'unreachable', 'prohibit', 'throw', 'nat', 'xresolve',
];

export const RTM_F_NOTIFY = 0x100;
export const RTM_F_CLONED = 0x200;
export const RTNH_F_DEAD = 1;
export const RTNH_F_PERVASIVE = 2;
export const RTNH_F_ONLINK = 4;
export const RTNH_F_LINKDOWN = 16;

export const RTA_UNSPEC = 0;
export const RTA_DST = 1;
export const RTA_SRC = 2;
export const RTA_IIF = 3;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_METRICS = 8;
export const RTA_MULTIPATH = 9;
export const RTA_FLOW = 11;
export const RTA_CACHEINFO = 12;
export const RTA_TABLE = 15;
export const RTA_MARK = 16;
export const RTA_PREF = 20;
export const RTA_VIA = 18;

export const RTAX_MTU = 2;

// neighbours
export const NDA_UNSPEC = 0;
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NDA_CACHEINFO = 3;
export const NDA_PROBES = 4;

export const NUD_INCOMPLETE = 0x01;
export const NUD_REACHABLE = 0x02;
export const NUD_STALE = 0x04;
export const NUD_DELAY = 0x08;
export const NUD_PROBE = 0x10;
export const NUD_FAILED = 0x20;
export const NUD_NOARP = 0x40;
export const NUD_PERMANENT = 0x80;
export const NUD_NONE = 0x00;
export const NUD_NAMES: Array<[number, string]> = [
  [NUD_PERMANENT, 'permanent'],
  [NUD_NOARP, 'noarp'],
  [NUD_REACHABLE, 'reachable'],
  [NUD_STALE, 'stale'],
  [NUD_DELAY, 'delay'],
  [NUD_PROBE, 'probe'],
  [NUD_FAILED, 'failed'],
  [NUD_INCOMPLETE, 'incomplete'],
];
export function nudName(state: number): string {
  for (const [bit, name] of NUD_NAMES) if (state & bit) return name;
  return 'none';
}

// policy routing rules (linux/fib_rules.h)
export const FRA_PRIORITY = 6;
export const FRA_FWMARK = 10;
export const FRA_TABLE = 15;
export const FRA_FWMASK = 16;
export const FRA_PROTOCOL = 21;
export const FR_ACT_TO_TBL = 1;
