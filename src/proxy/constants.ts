/**
 * What the proxy, the agent and the datapath agree on for redirection: the
 * packet marks (skb->mark, SO_MARK) and the policy routing that delivers
 * marked packets to local sockets.
 *
 *   MARK_TO_PROXY    set by the datapath on a packet it assigned a proxy
 *                    socket to (bpf_sk_assign): the rule below makes the stack
 *                    deliver it locally whatever its destination address.
 *   MARK_FROM_PROXY  SO_MARK of the proxy's upstream sockets: the datapath
 *                    does not redirect these packets again (every L7 rule that
 *                    applies was enforced by the proxy) and steers their
 *                    replies back to the proxy.
 */
export { MB_MARK_MASK as MARK_MASK, MB_MARK_TO_PROXY as MARK_TO_PROXY, MB_MARK_FROM_PROXY as MARK_FROM_PROXY } from '../datapath/constants';

/** Routing table with `local 0.0.0.0/0 dev lo`, looked up for MARK_TO_PROXY. */
export const PROXY_ROUTE_TABLE = 2004;
/** Priority of the fwmark rule: before the main table (32766), after local (0). */
export const PROXY_RULE_PRIORITY = 9;

/** Listener ports are picked from this range (and kept in the agent's state). */
export const PROXY_PORT_MIN = 10000;
export const PROXY_PORT_MAX = 19999;
