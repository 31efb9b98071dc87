/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ARP: parse an Ethernet/IPv4 ARP packet and turn a request into its reply in place. */
#ifndef MB_LIB_ARP_H
#define MB_LIB_ARP_H

#include "common.h"
#include "eth.h"

/* From linux/if_arp.h, which drags in libc socket headers. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

struct arp_eth_ipv4 {
	struct arphdr hdr;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

#define ARP_PKT_LEN (ETH_HLEN + sizeof(struct arp_eth_ipv4))

/* The ARP payload if the packet is an Ethernet/IPv4 ARP *request*, else NULL. */
static __always_inline struct arp_eth_ipv4 *arp_request(struct __sk_buff *ctx)
{
	void *data = ctx_data(ctx, ARP_PKT_LEN);
	struct arp_eth_ipv4 *arp;

	if (!data)
		return NULL;
	arp = data + ETH_HLEN;
	if (arp->hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->hdr.ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->hdr.ar_hln != ETH_ALEN || arp->hdr.ar_pln != 4 ||
	    arp->hdr.ar_op != bpf_htons(ARPOP_REQUEST))
		return NULL;
	return arp;
}

/*
 * Answer the request "who has tip" with "tip is at @mac", in place:
 * eth dst = requester's eth src, eth src = @mac; sha/sip = @mac/tip, tha/tip = requester.
 */
static __always_inline void arp_make_reply(struct arp_eth_ipv4 *arp, const volatile void *mac)
{
	struct ethhdr *eth = (void *)arp - ETH_HLEN;
	__be32 tip = arp->tip;
	__u8 req_mac[ETH_ALEN];

	mac_copy(req_mac, arp->sha);
	arp->hdr.ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(arp->tha, req_mac);
	arp->tip = arp->sip;
	mac_copy(arp->sha, mac);
	arp->sip = tip;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, mac);
}

#endif
