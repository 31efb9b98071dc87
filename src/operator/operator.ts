/**
 * The operator (bin/membrane-operator): one acting per cluster, chosen by
 * leader election on an etcd lease (leader.ts). While it leads it runs
 * cluster-pool IPAM and node GC (ipam.ts), identity GC (identitygc.ts) and
 * policy status aggregation (policystatus.ts); a candidate that does not lead
 * keeps its watches warm and acts the moment it is elected. It holds no state
 * of its own: everything it decides is in etcd, so it can be stopped, killed
 * or restarted at any time without touching traffic, and a new leader goes on
 * where the last one stopped.
 */
import { Kvstore, Reflector } from '../kvstore';
import { NODES } from '../kvstore/keys';
import type { Logger } from '../util/log';
import type { OperatorConfig } from './config';
import { IdentityGc } from './identitygc';
import { ClusterPoolIpam } from './ipam';
import { LeaderElection } from './leader';
import { PolicyStatusAggregator } from './policystatus';
import { CidrPool } from './pool';

export class Operator {
  readonly kv: Kvstore;
  readonly election: LeaderElection;
  readonly nodes: Reflector;
  readonly ipam: ClusterPoolIpam;
  readonly identityGc: IdentityGc;
  readonly policyStatus: PolicyStatusAggregator;

  constructor(
    readonly cfg: OperatorConfig,
    private readonly log: Logger,
  ) {
    this.kv = new Kvstore({ endpoints: cfg.endpoints, prefix: cfg.prefix, log });
    this.election = new LeaderElection(this.kv, cfg.id, cfg.leaderLeaseTtl, log.child({ component: 'leader' }));
    this.nodes = new Reflector(this.kv, NODES, log.child({ component: 'nodes-watch' }));
    const pool = cfg.pool ? new CidrPool(cfg.pool.cidr, cfg.pool.maskSize) : undefined;
    this.ipam = new ClusterPoolIpam(this.kv, this.nodes, pool, cfg.nodeGcGraceSeconds * 1000, log.child({ component: 'ipam' }));
    this.identityGc = new IdentityGc(this.kv, cfg.identityGcGraceSeconds * 1000, cfg.identityGcIntervalSeconds * 1000, log.child({ component: 'identity-gc' }));
    this.policyStatus = new PolicyStatusAggregator(this.kv, this.nodes, log.child({ component: 'policy-status' }));
    this.election.onElected = () => this.setActive(true);
    this.election.onDeposed = () => this.setActive(false);
  }

  private setActive(on: boolean): void {
    this.ipam.setActive(on);
    this.identityGc.setActive(on);
    this.policyStatus.setActive(on);
  }

  /** Watch everything (waiting for etcd, logging while it waits), then campaign. */
  async start(): Promise<void> {
    const waiting = setInterval(() => this.log.warn('waiting for the cluster store', { endpoints: this.cfg.endpoints }), 5000);
    try {
      await Promise.all([this.nodes.start(), this.ipam.start(), this.identityGc.start(), this.policyStatus.start()]);
    } finally {
      clearInterval(waiting);
    }
    await this.election.start();
    this.log.info('operator started', { id: this.cfg.id, prefix: this.cfg.prefix, pool: this.cfg.pool ?? null, nodeGcGraceSeconds: this.cfg.nodeGcGraceSeconds, identityGcGraceSeconds: this.cfg.identityGcGraceSeconds });
  }

  status() {
    return {
      id: this.cfg.id,
      leader: this.election.isLeader,
      currentLeader: this.election.leader() ?? null,
      nodes: this.nodes.size,
      ipam: { pool: this.cfg.pool ?? null, ...this.ipam.stats },
      identityGc: { identities: this.identityGc.identities, ...this.identityGc.stats },
      policyStatus: this.policyStatus.stats,
    };
  }

  async stop(): Promise<void> {
    this.setActive(false);
    await this.election.stop();
    this.ipam.stop();
    this.identityGc.stop();
    this.policyStatus.stop();
    this.nodes.stop();
    this.kv.close();
  }
}
