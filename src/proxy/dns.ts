/**
 * The DNS policy listener (kind 'dns-policy'): DNS over UDP and TCP that a
 * DNS rule selects, redirected to it by the datapath without NAT.
 *
 *   UDP  one socket on 127.0.0.1:port (IP_TRANSPARENT, marked as the
 *        proxy's), assigned to redirected datagrams by the datapath; the
 *        original destination of each comes with it (IP_ORIGDSTADDR). The
 *        answer is sent from that address (a transparent socket bound to it),
 *        so the pod sees it come from the server it asked.
 *   TCP  a transparent listener on the same port: the accepted socket's local
 *        address is the original destination; length-prefixed messages.
 *
 * Each query is decided with the client endpoint's egress table (decideDns):
 *   allowed  forwarded to the original destination from the node's address
 *            (pooled UDP sockets: the id is replaced on the way up and
 *            restored on the way down; a TCP connection per query); the
 *            answer goes back otherwise unchanged,
 *            but only after the addresses it carries for names a toFQDNs
 *            selector matches are in the node's maps (learn(): the agent
 *            acknowledges once identities, ipcache and policy maps are
 *            written; bounded by maxDelayMs, counted when exceeded)
 *   denied   an answer with rcode REFUSED (or NXDOMAIN, by configuration),
 *            the question echoed, nothing forwarded
 * Each query and answer is an L7 record with `dns`.
 */
import * as crypto from 'node:crypto';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as dnsPacket from 'dns-packet';
import { decideDns, DnsDecision } from '../policy/l7';
import { selectorMatches, type NameSelector } from '../fqdn/pattern';
import type { ListenerConfig } from './config';
import { MARK_FROM_PROXY } from './constants';
import type { ListenerContext } from './http';
import type { Peer } from './identity';
import { sockets, UDP_SLOT_BYTES } from './sockets';

const UDP = 17;
const TCP = 6;
/** How long a query waits for the configuration of an endpoint the proxy does not know yet. */
const UNKNOWN_ENDPOINT_WAIT_MS = 1500;
/** An upstream server that does not answer within this is given up (the client retries). */
const UPSTREAM_TIMEOUT_MS = 5000;
/** TCP messages larger than this are refused (a DNS message is at most 65535 bytes anyway). */
const MAX_TCP_MESSAGE = 65535;

const RCODE_NAMES: Record<number, string> = { 0: 'NoError', 1: 'FormErr', 2: 'ServFail', 3: 'NXDomain', 4: 'NotImp', 5: 'Refused' };
const RCODE_NUMBERS: Record<string, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

/** The agent's side of learning: resolves when the addresses are in the maps, or when the wait is given up. */
export interface FqdnLearner {
  /** toFQDNs selectors in force: only answers for names they match are learned. */
  selectors(): NameSelector[];
  /** Tell the agent; resolves 'acked', 'late' (maxDelay exceeded: released anyway) or 'no-agent'. */
  learn(endpointId: number, name: string, addresses: { ip: string; ttl: number }[]): Promise<'acked' | 'late' | 'no-agent' | 'known'>;
  rejectRcode(): 'REFUSED' | 'NXDOMAIN';
}

export interface DnsListenerContext extends ListenerContext {
  fqdn: FqdnLearner;
  dnsCounters: { queries: number; denied: number; forwarded: number; errors: number; learnLate: number; learnNoAgent: number };
}

/** The rcode of a decoded message, as a name (NoError, Refused, ...). */
function rcodeName(flags: number): string {
  return RCODE_NAMES[flags & 15] ?? `RCode${flags & 15}`;
}

/** A refusal of a query: the question echoed, QR and RA set, the given rcode, no records. */
export function refusal(query: dnsPacket.Packet, rcode: 'REFUSED' | 'NXDOMAIN'): Buffer {
  const qflags = query.flags ?? 0;
  return dnsPacket.encode({
    id: query.id,
    type: 'response',
    // opcode and RD from the query, RA, the rcode.
    flags: (qflags & 0x7900) | 0x0080 | RCODE_NUMBERS[rcode],
    questions: query.questions ?? [],
  });
}

/** A and AAAA records of an answer: the addresses and their TTLs, and the CNAMEs. */
/**
 * The names an answer's addresses stand for: the query name gets every A/AAAA
 * address of the answer (a CNAME chain ends at them), and each record's owner
 * name its own (the CNAME targets), so a toFQDNs selector naming either
 * matches, as in the reference system.
 */
export function addressesByName(qname: string, ans: dnsPacket.Packet): Map<string, { ip: string; ttl: number }[]> {
  const out = new Map<string, { ip: string; ttl: number }[]>();
  const add = (name: string, ip: string, ttl: number) => {
    const n = name.toLowerCase().endsWith('.') ? name.toLowerCase() : `${name.toLowerCase()}.`;
    const list = out.get(n) ?? [];
    if (!list.some((x) => x.ip === ip)) list.push({ ip, ttl });
    out.set(n, list);
  };
  for (const a of ans.answers ?? []) {
    if (a.type !== 'A' && a.type !== 'AAAA') continue;
    add(qname, String(a.data), a.ttl ?? 0);
    if (a.name) add(a.name, String(a.data), a.ttl ?? 0);
  }
  return out;
}

export function answerAddresses(ans: dnsPacket.Packet): { ips: string[]; ttls: number[]; cnames: string[] } {
  const ips: string[] = [];
  const ttls: number[] = [];
  const cnames: string[] = [];
  for (const a of ans.answers ?? []) {
    if (a.type === 'A' || a.type === 'AAAA') {
      ips.push(String(a.data));
      ttls.push(a.ttl ?? 0);
    } else if (a.type === 'CNAME') cnames.push(String(a.data));
  }
  return { ips, ttls, cnames };
}

export class DnsPolicyListener {
  private udpFd?: number;
  private server?: net.Server;
  private readonly open = new Set<net.Socket>();
  /** Transparent sockets answering from an address pods queried, by "ip:port". */
  private readonly answerFds = new Map<string, number>();
  private closing = false;
  state: 'starting' | 'listening' | 'error' | 'closed' = 'starting';
  error?: string;
  inFlight = 0;

  constructor(
    readonly cfg: ListenerConfig,
    private readonly ctx: DnsListenerContext,
  ) {}

  get connections(): number {
    return this.open.size + this.inFlight;
  }

  async start(): Promise<void> {
    try {
      this.udpFd = sockets().udpSocket(this.cfg.address, this.cfg.port, MARK_FROM_PROXY, this.cfg.transparent);
      const tfd = sockets().sockListen(this.cfg.address, this.cfg.port, 1024, this.cfg.transparent, MARK_FROM_PROXY);
      const server = net.createServer({ noDelay: true }, (s) => this.onTcp(s));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd: tfd }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (e) => this.ctx.log.error('DNS TCP listener failed', { listener: this.cfg.name, error: e }));
      this.server = server;
    } catch (e) {
      this.state = 'error';
      this.error = (e as Error).message;
      if (this.udpFd !== undefined) fs.closeSync(this.udpFd);
      this.udpFd = undefined;
      throw e;
    }
    this.state = 'listening';
    void this.udpLoop(this.udpFd);
  }

  private async udpLoop(fd: number): Promise<void> {
    const native = sockets();
    // One receive at a time per socket: its buffer is allocated once.
    const buf = Buffer.alloc(64 * UDP_SLOT_BYTES);
    while (!this.closing) {
      let batch: { data: Buffer; srcIp: string; srcPort: number; dstIp?: string; dstPort?: number }[];
      try {
        batch = await native.udpRecvAsync(fd, buf);
      } catch (e) {
        if (this.closing) return;
        this.ctx.log.error('DNS UDP receive failed', { listener: this.cfg.name, error: e });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (batch.length === 0 && this.closing) return;
      for (const m of batch) {
        if (!m.dstIp || !m.dstPort) continue;
        // Only redirected datagrams: one sent to the listener's own address is ignored.
        if (m.dstPort === this.cfg.port && m.dstIp === this.cfg.address) continue;
        const dstIp = m.dstIp;
        const dstPort = m.dstPort;
        void this.handle(m.data, m.srcIp, m.srcPort, dstIp, dstPort, UDP, (answer) => this.sendUdp(answer, dstIp, dstPort, m.srcIp, m.srcPort));
      }
    }
  }

  private sendUdp(answer: Buffer, fromIp: string, fromPort: number, toIp: string, toPort: number): void {
    const key = `${fromIp}:${fromPort}`;
    let fd = this.answerFds.get(key);
    try {
      if (fd === undefined) {
        fd = sockets().udpSocket(fromIp, fromPort, MARK_FROM_PROXY, true);
        if (this.answerFds.size > 1024) this.closeAnswerFds();
        this.answerFds.set(key, fd);
      }
      sockets().udpSendTo(fd, answer, toIp, toPort);
    } catch (e) {
      this.ctx.dnsCounters.errors++;
      this.ctx.log.warn('DNS answer could not be sent', { listener: this.cfg.name, from: key, error: e });
    }
  }

  private closeAnswerFds(): void {
    for (const fd of this.answerFds.values()) {
      try {
        fs.closeSync(fd);
      } catch {
        /* gone */
      }
    }
    this.answerFds.clear();
  }

  private onTcp(s: net.Socket): void {
    const localIp = (s.localAddress ?? '').replace(/^::ffff:/, '');
    const localPort = s.localPort ?? 0;
    if (localPort === this.cfg.port && localIp === this.cfg.address) {
      s.destroy();
      return;
    }
    const srcIp = (s.remoteAddress ?? '').replace(/^::ffff:/, '');
    const srcPort = s.remotePort ?? 0;
    this.open.add(s);
    s.on('close', () => this.open.delete(s));
    s.on('error', () => {});
    let buf: Buffer = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len === 0 || len > MAX_TCP_MESSAGE) return void s.destroy();
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.handle(Buffer.from(msg), srcIp, srcPort, localIp, localPort, TCP, (answer) => {
          if (s.destroyed) return;
          const head = Buffer.alloc(2);
          head.writeUInt16BE(answer.length);
          s.write(Buffer.concat([head, answer]));
        });
      }
    });
  }

  /** Decide one query, answer it (refused, or the upstream's answer after learning). */
  private async handle(msg: Buffer, srcIp: string, srcPort: number, dstIp: string, dstPort: number, proto: number, reply: (b: Buffer) => void): Promise<void> {
    this.ctx.dnsCounters.queries++;
    this.inFlight++;
    try {
      let query: dnsPacket.Packet;
      try {
        query = dnsPacket.decode(msg);
      } catch {
        this.ctx.dnsCounters.errors++;
        return; // not DNS: dropped, as a server would
      }
      const q = query.questions?.[0];
      const qname = q?.name ?? '';
      const fqname = qname.endsWith('.') ? qname : `${qname}.`;
      const qtypes = (query.questions ?? []).map((x) => String(x.type));
      let src: Peer;
      let dst: Peer;
      try {
        src = this.ctx.peer(srcIp, srcPort);
        dst = this.ctx.peer(dstIp, dstPort);
      } catch (e) {
        this.ctx.dnsCounters.errors++;
        this.ctx.log.error('cannot identify a redirected DNS query; dropped', { listener: this.cfg.name, error: e });
        return;
      }
      const d = await this.decide(src, dst, proto, fqname);
      const policy = d.policies.find((p) => /^[A-Za-z]+\/[^\s,]+$/.test(p));
      this.ctx.record({ time: Date.now(), kind: 'request', direction: 'egress', verdict: d.allowed ? 'forwarded' : 'denied', policy, src, dst, dns: { query: fqname, qtypes } });
      if (!d.allowed) {
        const rcode = this.ctx.fqdn.rejectRcode();
        this.ctx.dnsCounters.denied++;
        this.ctx.counters.requests.denied++;
        reply(refusal(query, rcode));
        this.ctx.record({
          time: Date.now(), kind: 'response', direction: 'egress', verdict: 'denied', policy, src: dst, dst: src,
          dns: { query: fqname, qtypes, rcode: rcode === 'REFUSED' ? 'Refused' : 'NXDomain' },
        });
        return;
      }
      let answer: Buffer<ArrayBufferLike>;
      try {
        answer = proto === UDP ? await upstreamUdp(msg, dstIp, dstPort) : await upstreamTcp(msg, dstIp, dstPort);
      } catch (e) {
        this.ctx.dnsCounters.errors++;
        this.ctx.counters.requests.error++;
        this.ctx.log.debug('DNS upstream failed', { listener: this.cfg.name, server: `${dstIp}:${dstPort}`, error: e });
        this.ctx.record({ time: Date.now(), kind: 'response', direction: 'egress', verdict: 'error', policy, src: dst, dst: src, dns: { query: fqname, qtypes } });
        return;
      }
      let decoded: dnsPacket.Packet | undefined;
      try {
        decoded = dnsPacket.decode(answer);
      } catch {
        decoded = undefined;
      }
      const addrs = decoded ? answerAddresses(decoded) : { ips: [], ttls: [], cnames: [] };
      if (addrs.ips.length && src.endpointId !== undefined) {
        const sels = this.ctx.fqdn.selectors();
        const learning: Promise<'acked' | 'late' | 'no-agent' | 'known'>[] = [];
        for (const [name, list] of addressesByName(fqname, decoded!)) {
          if (sels.some((s) => selectorMatches(s, name))) learning.push(this.ctx.fqdn.learn(src.endpointId, name, list));
        }
        const results = await Promise.all(learning);
        if (results.includes('late')) this.ctx.dnsCounters.learnLate++;
        else if (results.includes('no-agent')) this.ctx.dnsCounters.learnNoAgent++;
      }
      this.ctx.dnsCounters.forwarded++;
      this.ctx.counters.requests.forwarded++;
      reply(answer);
      this.ctx.record({
        time: Date.now(), kind: 'response', direction: 'egress', verdict: 'forwarded', policy, src: dst, dst: src,
        dns: { query: fqname, qtypes, rcode: decoded ? rcodeName(decoded.flags ?? 0) : 'ServFail', ips: addrs.ips, ttls: addrs.ttls, ...(addrs.cnames.length ? { cnames: addrs.cnames } : {}) },
      });
    } finally {
      this.inFlight--;
    }
  }

  private async decide(src: Peer, dst: Peer, proto: number, qname: string): Promise<DnsDecision> {
    if (src.endpointId === undefined) return { allowed: false, policies: ['the client is not a local endpoint'] };
    let table = this.ctx.table(src.endpointId, true);
    if (!table) {
      await this.ctx.nextConfig(UNKNOWN_ENDPOINT_WAIT_MS);
      table = this.ctx.table(src.endpointId, true);
    }
    if (!table) return { allowed: false, policies: [`endpoint ${src.endpointId} is not known to the proxy`] };
    return decideDns(table, dst.identity, dst.port, proto, qname);
  }

  async close(): Promise<void> {
    this.closing = true;
    this.state = 'closed';
    if (this.udpFd !== undefined) {
      const fd = this.udpFd;
      this.udpFd = undefined;
      sockets().sockShutdown(fd);
      // The receive on the worker thread returns on shutdown; close after it had the chance.
      setTimeout(() => {
        try {
          fs.closeSync(fd);
        } catch {
          /* gone */
        }
      }, 200).unref();
    }
    this.closeAnswerFds();
    for (const s of this.open) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/**
 * Upstream UDP sockets, from the node's address: a few per server, each with
 * the queries in flight on it by id. A query gets a fresh random id on a
 * random socket of the server's pool (the answer's id is set back to the
 * client's), so the proxy does not pay a socket per query and an answer is
 * taken only from the server the query went to, with the id it was given.
 */
const POOL_SOCKETS = 8;
/** Servers with a pool at most (a pod asking many servers must not exhaust the proxy's descriptors): the oldest pool goes. */
const POOL_SERVERS = 64;

interface PoolSocket {
  sock: dgram.Socket;
  pending: Map<number, { id: number; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>;
}

const pools = new Map<string, PoolSocket[]>();

function poolFor(ip: string, port: number): PoolSocket[] {
  const key = `${ip}:${port}`;
  let pool = pools.get(key);
  if (pool) return pool;
  if (pools.size >= POOL_SERVERS) {
    const oldKey = pools.keys().next().value!;
    closePool(oldKey, `more than ${POOL_SERVERS} servers`);
  }
  pool = [];
  for (let i = 0; i < POOL_SOCKETS; i++) {
    const ps: PoolSocket = { sock: dgram.createSocket(net.isIPv6(ip) ? 'udp6' : 'udp4'), pending: new Map() };
    ps.sock.on('message', (b, rinfo) => {
      if (rinfo.address !== ip || rinfo.port !== port || b.length < 12) return;
      const q = ps.pending.get(b.readUInt16BE(0));
      if (!q) return;
      ps.pending.delete(b.readUInt16BE(0));
      clearTimeout(q.timer);
      b.writeUInt16BE(q.id, 0);
      q.resolve(b);
    });
    // A socket that failed: the server's pool is replaced at the next query; the queries in flight fail (the client retries).
    ps.sock.on('error', (e) => closePool(key, e.message));
    ps.sock.unref();
    pool.push(ps);
  }
  pools.set(key, pool);
  return pool;
}

function closePool(key: string, why: string): void {
  const pool = pools.get(key);
  if (!pool) return;
  pools.delete(key);
  for (const ps of pool) {
    for (const q of ps.pending.values()) {
      clearTimeout(q.timer);
      q.reject(new Error(`upstream sockets to ${key} closed: ${why}`));
    }
    ps.pending.clear();
    try {
      ps.sock.close();
    } catch {
      /* already closed */
    }
  }
}

/** One query to a server over UDP, from the node's address; resolves with the answer (the client's id restored). */
function upstreamUdp(msg: Buffer, ip: string, port: number): Promise<Buffer> {
  const pool = poolFor(ip, port);
  const ps = pool[crypto.randomInt(pool.length)];
  let id = crypto.randomInt(65536);
  for (let i = 0; i < 16 && ps.pending.has(id); i++) id = crypto.randomInt(65536);
  if (ps.pending.has(id)) return Promise.reject(new Error(`too many queries in flight to ${ip}:${port}`));
  const out = Buffer.from(msg);
  const clientId = out.readUInt16BE(0);
  out.writeUInt16BE(id, 0);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ps.pending.delete(id);
      reject(new Error(`no answer from ${ip}:${port} within ${UPSTREAM_TIMEOUT_MS} ms`));
    }, UPSTREAM_TIMEOUT_MS);
    timer.unref();
    ps.pending.set(id, { id: clientId, resolve, reject, timer });
    ps.sock.send(out, port, ip, (e) => {
      if (!e) return;
      clearTimeout(timer);
      ps.pending.delete(id);
      reject(e);
    });
  });
}

/** One query to a server over TCP, from the node's address. */
function upstreamTcp(msg: Buffer, ip: string, port: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: ip, port });
    let buf = Buffer.alloc(0);
    const t = setTimeout(() => done(new Error(`no answer from ${ip}:${port} within ${UPSTREAM_TIMEOUT_MS} ms`)), UPSTREAM_TIMEOUT_MS);
    function done(e?: Error, b?: Buffer) {
      clearTimeout(t);
      s.destroy();
      if (e) reject(e);
      else resolve(b!);
    }
    s.on('error', (e) => done(e));
    s.on('connect', () => {
      const head = Buffer.alloc(2);
      head.writeUInt16BE(msg.length);
      s.write(Buffer.concat([head, msg]));
    });
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) done(undefined, buf.subarray(2, 2 + buf.readUInt16BE(0)));
    });
    s.on('end', () => done(new Error(`${ip}:${port} closed the connection before answering`)));
  });
}
