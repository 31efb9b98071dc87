/**
 * Listener kinds: what serves each `kind` of ProxyConfig.listeners. A kind is
 * a factory from its listener configuration and the proxy's context to a
 * Listener; proxy.ts starts, replaces and closes listeners through this
 * interface only. The DNS proxy registers 'dns-policy' (UDP+TCP, transparent)
 * and the Gateway API 'http-gateway' (plain listeners, routes) here, each with
 * its own part of the configuration.
 */
import type { ListenerConfig, ListenerKind } from './config';
import { HttpPolicyListener, ListenerContext } from './http';
import { HttpGatewayListener } from './gateway';
import { DnsListenerContext, DnsPolicyListener } from './dns';

export interface Listener {
  readonly cfg: ListenerConfig;
  state: 'starting' | 'listening' | 'error' | 'closed';
  error?: string;
  readonly connections: number;
  start(): Promise<void>;
  close(): Promise<void>;
}

export const LISTENER_FACTORIES: Record<ListenerKind, (cfg: ListenerConfig, ctx: DnsListenerContext) => Listener> = {
  'http-policy': (cfg, ctx: ListenerContext) => new HttpPolicyListener(cfg, ctx),
  'http-gateway': (cfg, ctx: ListenerContext) => new HttpGatewayListener(cfg, ctx),
  'dns-policy': (cfg, ctx) => new DnsPolicyListener(cfg, ctx),
};
