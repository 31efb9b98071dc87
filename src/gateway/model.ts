/**
 * The listener configuration a Gateway becomes: what the agent sends the
 * proxy (ProxyConfig.gateways) for each listener of kind 'http-gateway'. It is
 * plain data, computed by translate.ts and evaluated by match.ts.
 */
import type { HttpRouteFilter } from './resources';

export interface RouteMatch {
  path: { type: 'Exact' | 'PathPrefix'; value: string };
  /** Names lowercased; the first entry of a name only (as the specification says). */
  headers: { name: string; value: string }[];
  queryParams: { name: string; value: string }[];
  method?: string;
}

export interface RouteBackend {
  /** "namespace/name:port" of the Service (for records and status). */
  name: string;
  weight: number;
  /** Ready endpoints; empty when the Service has none. */
  endpoints: { ip: string; port: number }[];
  /** Set when the reference cannot be resolved: its share of requests gets 500. */
  error?: string;
}

/** One match of one rule of one route on one Gateway listener; the table's entries are in precedence order. */
export interface RouteEntry {
  /** "namespace/name" of the HTTPRoute. */
  route: string;
  rule: number;
  /** The Gateway listener (section name) it is attached to, and its hostname. */
  listener: string;
  listenerHostname?: string;
  /** The hostnames it serves (the route's intersected with the listener's); empty: any. */
  hostnames: string[];
  match: RouteMatch;
  filters: HttpRouteFilter[];
  backends: RouteBackend[];
}

/** What one proxy listener (one Gateway address and port) serves. */
export interface GatewayTable {
  /** "namespace/name" of the Gateway. */
  gateway: string;
  address: string;
  port: number;
  entries: RouteEntry[];
}
