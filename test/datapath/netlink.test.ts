/**
 * rtnetlink against the real kernel (needs root). Builds a throwaway netns
 * pair with `ip netns add`, then does everything through RtNetlink/Netns and
 * cross-checks with `ip -j`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { Netns, NetlinkArgError, NetlinkError, RtNetlink, getSysctl, setSysctl } from '../../src/netlink';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function ipj(...args: string[]): any {
  const out = execFileSync('ip', ['-j', ...args], { encoding: 'utf8' });
  return out.trim() ? JSON.parse(out) : [];
}

describe('rtnetlink (real kernel)', { skip }, () => {
  const tag = crypto.randomBytes(3).toString('hex');
  const nsA = `mbnl-${tag}-a`; // "host" side
  const nsB = `mbnl-${tag}-b`; // "container" side
  const pathA = `/run/netns/${nsA}`;
  const pathB = `/run/netns/${nsB}`;
  const hostIf = `lxc${tag}`;
  const hostMac = '02:aa:00:00:00:01';
  const peerMac = '02:bb:00:00:00:02';
  let nlA: RtNetlink;
  let nlB: RtNetlink;
  let netnsB: Netns;
  let hostIdx = 0;
  let peerIdx = 0;

  before(() => {
    execFileSync('ip', ['netns', 'add', nsA]);
    execFileSync('ip', ['netns', 'add', nsB]);
    nlA = RtNetlink.open(pathA);
    netnsB = Netns.open(pathB);
    nlB = RtNetlink.open(netnsB);
  });

  after(() => {
    for (const c of [nlA, nlB]) {
      try { c?.close(); } catch { /* ignore */ }
    }
    try { netnsB?.close(); } catch { /* ignore */ }
    for (const n of [nsA, nsB]) {
      try { execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' }); } catch { /* ignore */ }
    }
  });

  it('sockets live in their own namespace', () => {
    const names = nlA.linkList().map((l) => l.name);
    assert.deepEqual(names, ['lo']);
    const a1 = Netns.open(pathA);
    const a2 = Netns.open(pathA);
    const cur = Netns.current();
    try {
      assert.ok(a1.equals(a2));
      assert.ok(!a1.equals(cur));
      assert.ok(!a1.equals(netnsB));
    } finally {
      a1.close();
      a2.close();
      cur.close();
    }
  });

  it('creates a veth with the peer directly in the other netns', () => {
    const link = nlA.linkAddVeth({ name: hostIf, peerName: 'eth0', peerNetns: netnsB, mtu: 1450, mac: hostMac, peerMac, txqlen: 500 });
    hostIdx = link.index;
    assert.equal(link.name, hostIf);
    assert.equal(link.kind, 'veth');
    assert.equal(link.mtu, 1450);
    assert.equal(link.mac, hostMac);
    assert.equal(link.up, false);
    const peer = nlB.linkGet('eth0');
    assert.ok(peer);
    peerIdx = peer.index;
    assert.equal(peer.kind, 'veth');
    assert.equal(peer.mac, peerMac);
    assert.equal(peer.mtu, 1450);
    // each side points at the other (IFLA_LINK + IFLA_LINK_NETNSID)
    assert.equal(link.linkIndex, peerIdx);
    assert.equal(peer.linkIndex, hostIdx);
    assert.equal(typeof link.linkNetnsId, 'number');
    // never appeared on the host side
    assert.equal(nlA.linkGet('eth0'), undefined);
    assert.deepEqual(nlB.linkGet(peerIdx)?.name, 'eth0');

    const [ja] = ipj('-n', nsA, '-d', 'link', 'show', hostIf);
    assert.equal(ja.mtu, 1450);
    assert.equal(ja.address, hostMac);
    assert.equal(ja.txqlen, 500);
    assert.equal(ja.linkinfo.info_kind, 'veth');
    assert.equal(ja.link_index, peerIdx);
    const [jb] = ipj('-n', nsB, 'link', 'show', 'eth0');
    assert.equal(jb.address, peerMac);
    assert.equal(jb.ifindex, peerIdx);
  });

  it('EEXIST names the interface', () => {
    assert.throws(
      () => nlA.linkAddVeth({ name: hostIf, peerName: 'eth0', peerNetns: netnsB }),
      (e: unknown) => {
        assert.ok(e instanceof NetlinkError);
        assert.equal(e.code, 'EEXIST');
        assert.equal(e.errno, 17);
        assert.equal(e.op, 'RTM_NEWLINK');
        assert.match(e.message, new RegExp(`^netlink RTM_NEWLINK \\(veth ${hostIf} peer eth0 in netns ${pathB}; socket netns ${pathA}\\): File exists \\(EEXIST, errno 17\\)`));
        return true;
      },
    );
  });

  it('sets up/mtu/mac/noarp and renames', () => {
    nlA.linkSet(hostIdx, { up: true, mtu: 1400 });
    nlB.linkSet(peerIdx, { up: true, mtu: 1400 });
    const [ja] = ipj('-n', nsA, 'link', 'show', hostIf);
    assert.ok(ja.flags.includes('UP'));
    assert.equal(ja.mtu, 1400);
    assert.equal(nlA.linkGet(hostIdx)?.up, true);

    nlB.linkSet(peerIdx, { up: false });
    nlB.linkSet(peerIdx, { name: 'tmp0', mac: '02:bb:00:00:00:03', noarp: true });
    const [jb] = ipj('-n', nsB, 'link', 'show', 'tmp0');
    assert.equal(jb.address, '02:bb:00:00:00:03');
    assert.ok(jb.flags.includes('NOARP'));
    assert.ok(!jb.flags.includes('UP'));
    nlB.linkSet(peerIdx, { name: 'eth0', mac: peerMac, noarp: false, up: true });
    const l = nlB.linkGet('eth0');
    assert.ok(l && l.up && l.mac === peerMac && !(l.flags & 0x80));
  });

  it('adds /32 and /128 addresses', () => {
    nlA.addrAdd(hostIdx, '10.200.0.1/32');
    nlB.addrAdd(peerIdx, '10.200.0.2/32');
    nlB.addrAdd(peerIdx, 'fd00:200::2/128', { noDad: true });
    const jb = ipj('-n', nsB, 'addr', 'show', 'dev', 'eth0')[0].addr_info;
    assert.ok(jb.some((a: { local: string; prefixlen: number }) => a.local === '10.200.0.2' && a.prefixlen === 32));
    assert.ok(jb.some((a: { local: string; prefixlen: number }) => a.local === 'fd00:200::2' && a.prefixlen === 128));
    const list = nlB.addrList(peerIdx);
    assert.deepEqual(
      list.filter((a) => a.scope === 'universe').map((a) => [a.family, a.address, a.prefixLen]).sort(),
      [[4, '10.200.0.2', 32], [6, 'fd00:200::2', 128]],
    );
    assert.throws(() => nlA.addrAdd(hostIdx, '10.200.0.1/32'), (e: unknown) => e instanceof NetlinkError && e.code === 'EEXIST');
  });

  it('rejects bad input naming the field and value', () => {
    assert.throws(() => nlA.addrAdd(hostIdx, '10.0.0.300/32'), (e: unknown) => e instanceof NetlinkArgError && e.field === 'cidr' && /10\.0\.0\.300\/32/.test(e.message));
    assert.throws(() => nlA.addrAdd(hostIdx, '10.0.0.1/33'), /cidr: "10.0.0.1\/33" has an invalid prefix length/);
    assert.throws(() => nlA.addrAdd(hostIdx, '10.0.0.1'), /cidr: "10.0.0.1" is not a CIDR/);
    assert.throws(() => nlA.routeAdd({ dst: '10.0.0.5/24', dev: hostIdx }), /dst: "10.0.0.5\/24" has host bits set/);
    assert.throws(() => nlA.routeAdd({ dst: 'default', gateway: 'nope' }), /gateway: "nope" is not an IPv4 or IPv6 address/);
    assert.throws(() => nlA.routeAdd({ dst: '10.0.0.0/8', gateway: 'fd00::1' }), /gateway: "fd00::1" is IPv6 but dst 10.0.0.0\/8 is IPv4/);
    assert.throws(() => nlA.linkAddVeth({ name: 'this-name-is-too-long', peerName: 'x' }), /name: "this-name-is-too-long" is longer than 15 bytes/);
    assert.throws(() => nlA.linkSet(hostIdx, { mac: '01:00:5e:00:00:01' }), /mac: "01:00:5e:00:00:01" is a multicast MAC/);
    assert.throws(() => nlA.linkSet(hostIdx, { mtu: 10 }), /mtu: 10 must be an integer in \[68, 65535\]/);
    assert.throws(() => nlA.neighAdd({ dev: hostIdx, ip: '10.0.0.1', mac: 'zz' }), /mac: "zz" is not a MAC address/);
  });

  it('adds scope-link and onlink default routes (v4 + v6)', () => {
    nlA.routeAdd({ dst: '10.200.0.2/32', dev: hostIdx, scope: 'link' });
    nlB.routeAdd({ dst: '10.200.0.1/32', dev: peerIdx, scope: 'link' });
    nlB.routeAdd({ dst: 'default', gateway: '10.200.0.1', dev: peerIdx, onlink: true, mtu: 1300 });
    nlB.routeAdd({ dst: 'default', gateway: 'fe80::1', dev: peerIdx, src: 'fd00:200::2' });

    const jr4 = ipj('-n', nsB, 'route', 'show');
    const def = jr4.find((r: { dst: string }) => r.dst === 'default');
    assert.equal(def.gateway, '10.200.0.1');
    assert.equal(def.dev, 'eth0');
    assert.ok(def.flags.includes('onlink'));
    assert.equal(def.metrics?.[0]?.mtu ?? def.mtu, 1300);
    const lr = jr4.find((r: { dst: string }) => r.dst === '10.200.0.1');
    assert.equal(lr.scope, 'link');
    const jr6 = ipj('-n', nsB, '-6', 'route', 'show', 'default');
    assert.equal(jr6[0].gateway, 'fe80::1');
    assert.equal(jr6[0].prefsrc, 'fd00:200::2');

    const r4 = nlB.routeList({ family: 4 });
    const d4 = r4.find((r) => r.dst === 'default');
    assert.ok(d4);
    assert.equal(d4.gateway, '10.200.0.1');
    assert.equal(d4.dev, peerIdx);
    assert.equal(d4.onlink, true);
    assert.equal(d4.mtu, 1300);
    assert.equal(d4.scope, 'universe');
    assert.equal(d4.table, 254);
    assert.equal(d4.protocol, 3);
    const l4 = r4.find((r) => r.dst === '10.200.0.1/32');
    assert.ok(l4);
    assert.equal(l4.scope, 'link');
    assert.equal(l4.gateway, undefined);
    const d6 = nlB.routeList({ family: 6 }).find((r) => r.dst === 'default');
    assert.ok(d6);
    assert.equal(d6.gateway, 'fe80::1');
    assert.equal(d6.src, 'fd00:200::2');

    assert.throws(
      () => nlB.routeAdd({ dst: 'default', gateway: '10.200.0.1', dev: peerIdx, onlink: true }),
      (e: unknown) => e instanceof NetlinkError && e.code === 'EEXIST' && /add route default via 10.200.0.1/.test(e.message),
    );
    nlB.routeAdd({ dst: 'default', gateway: '10.200.0.1', dev: peerIdx, onlink: true, replace: true });
    // routes in a non-main table
    nlB.routeAdd({ dst: '192.168.7.0/24', dev: peerIdx, table: 1000 });
    assert.deepEqual(nlB.routeList({ table: 1000 }).map((r) => [r.dst, r.table]), [['192.168.7.0/24', 1000]]);
    assert.equal(ipj('-n', nsB, 'route', 'show', 'table', '1000')[0].dst, '192.168.7.0/24');
    assert.equal(nlB.routeDel({ dst: '192.168.7.0/24', table: 1000 }), true);
  });

  it('adds, lists and deletes fwmark rules and a local default route in its own table', () => {
    const lo = nlA.linkGet('lo')!;
    nlA.routeAdd({ dst: '0.0.0.0/0', type: 'local', dev: lo.index, table: 2004, replace: true });
    const routes = nlA.routeList({ table: 2004 });
    assert.deepEqual(routes.map((r) => [r.dst, r.type, r.scope, r.dev]), [['default', 'local', 'host', lo.index]]);
    assert.equal(ipj('-n', nsA, 'route', 'show', 'table', '2004')[0].type, 'local');
    assert.equal(nlA.ruleEnsure({ priority: 9, fwmark: 0x200, fwmask: 0xf00, table: 2004 }), true);
    assert.equal(nlA.ruleEnsure({ priority: 9, fwmark: 0x200, fwmask: 0xf00, table: 2004 }), false, 'idempotent');
    const mine = nlA.ruleList(4).filter((r) => r.table === 2004);
    assert.deepEqual(mine.map((r) => [r.priority, r.fwmark, r.fwmask, r.action]), [[9, 0x200, 0xf00, 'to-table']]);
    const ipRule = ipj('-n', nsA, 'rule', 'show').find((r: { priority: number }) => r.priority === 9);
    assert.equal(ipRule.fwmark, '0x200');
    assert.equal(ipRule.fwmask, '0xf00');
    assert.equal(ipRule.table, '2004');
    assert.throws(() => nlA.ruleAdd({ priority: 9, fwmark: 0x200, fwmask: 0xf00, table: 2004 }), (e: unknown) => e instanceof NetlinkError && e.code === 'EEXIST');
    assert.throws(() => nlA.ruleAdd({ priority: 0, table: 2004 }), (e: unknown) => e instanceof NetlinkArgError && /priority/.test(e.message));
    assert.throws(() => nlA.ruleAdd({ priority: 9, table: 254 }), (e: unknown) => e instanceof NetlinkArgError && /table/.test(e.message));
    assert.equal(nlA.ruleDel({ priority: 9, fwmark: 0x200, fwmask: 0xf00, table: 2004 }), true);
    assert.equal(nlA.ruleDel({ priority: 9, fwmark: 0x200, fwmask: 0xf00, table: 2004 }), false);
    assert.equal(nlA.routeDel({ dst: '0.0.0.0/0', type: 'local', dev: lo.index, table: 2004 }), true);
  });

  it('kernel errors carry the extended ACK; missing namespaces name the path', () => {
    assert.throws(
      () => nlB.routeAdd({ dst: '10.9.0.0/16', gateway: '10.99.99.99', dev: peerIdx }),
      (e: unknown) => {
        assert.ok(e instanceof NetlinkError);
        assert.equal(e.code, 'ENETUNREACH');
        assert.equal(e.extAck, 'Nexthop has invalid gateway');
        assert.match(e.message, /^netlink RTM_NEWROUTE \(add route 10.9.0.0\/16 via 10.99.99.99 dev index \d+; socket netns .*\): Network is unreachable \(ENETUNREACH, errno 101\): Nexthop has invalid gateway$/);
        return true;
      },
    );
    assert.throws(() => RtNetlink.open('/run/netns/mbnl-does-not-exist'), (e: unknown) => {
      const err = e as NodeJS.ErrnoException;
      assert.equal(err.code, 'ENOENT');
      assert.match(err.message, /\/run\/netns\/mbnl-does-not-exist/);
      return true;
    });
    assert.equal(nlB.linkDel('nosuch0'), false);
    assert.equal(nlB.linkGet(999999), undefined);
  });

  it('adds, lists and deletes neighbours', () => {
    nlB.neighAdd({ dev: peerIdx, ip: '10.200.0.1', mac: hostMac });
    nlB.neighAdd({ dev: peerIdx, ip: 'fe80::1', mac: hostMac });
    nlB.neighAdd({ dev: peerIdx, ip: '10.200.0.1', mac: hostMac }); // replace: idempotent
    const jn = ipj('-n', nsB, 'neigh', 'show', 'dev', 'eth0');
    const n4 = jn.find((n: { dst: string }) => n.dst === '10.200.0.1');
    assert.equal(n4.lladdr, hostMac);
    assert.ok(n4.state.includes('PERMANENT'));
    assert.ok(jn.some((n: { dst: string }) => n.dst === 'fe80::1'));
    const list = nlB.neighList(peerIdx).filter((n) => n.permanent);
    assert.deepEqual(list.map((n) => [n.family, n.ip, n.mac, n.state]).sort(), [
      [4, '10.200.0.1', hostMac, 'permanent'],
      [6, 'fe80::1', hostMac, 'permanent'],
    ]);
    assert.throws(
      () => nlB.neighAdd({ dev: peerIdx, ip: '10.200.0.1', mac: hostMac, replace: false }),
      (e: unknown) => e instanceof NetlinkError && e.code === 'EEXIST',
    );
    assert.equal(nlB.neighDel({ dev: peerIdx, ip: 'fe80::1' }), true);
    assert.equal(nlB.neighDel({ dev: peerIdx, ip: 'fe80::1' }), false);
    assert.ok(!ipj('-n', nsB, 'neigh', 'show', 'dev', 'eth0').some((n: { dst: string }) => n.dst === 'fe80::1'));
  });

  it('runs sync work inside a namespace (nsRun) and restores on throw', () => {
    const before = Netns.current();
    try {
      const dev = netnsB.run(() => fs.readFileSync('/proc/thread-self/net/dev', 'utf8'));
      assert.match(dev, /\beth0:/);
      assert.doesNotMatch(fs.readFileSync('/proc/thread-self/net/dev', 'utf8'), new RegExp(`\\b${hostIf}:`));
      assert.throws(() => netnsB.run(() => { throw new Error('boom'); }), /boom/);
      const now = Netns.current();
      assert.ok(now.equals(before));
      now.close();
      setSysctl(netnsB, 'net.ipv4.conf.eth0.rp_filter', 0);
      setSysctl(netnsB, 'net.ipv4.conf.all.rp_filter', 2);
      assert.equal(getSysctl(netnsB, 'net.ipv4.conf.eth0.rp_filter'), '0');
      assert.equal(execFileSync('ip', ['netns', 'exec', nsB, 'sysctl', '-n', 'net.ipv4.conf.all.rp_filter'], { encoding: 'utf8' }).trim(), '2');
      setSysctl(netnsB, 'net.ipv4.conf.eth0.rp_filter', 1);
      assert.equal(execFileSync('ip', ['netns', 'exec', nsB, 'sysctl', '-n', 'net.ipv4.conf.eth0.rp_filter'], { encoding: 'utf8' }).trim(), '1');
      assert.throws(() => setSysctl(netnsB, 'net.ipv4.conf.nosuchdev.rp_filter', 0), /sysctl net.ipv4.conf.nosuchdev.rp_filter=0 in netns .*ENOENT/);
    } finally {
      before.close();
    }
  });

  it('creates a collect-metadata vxlan', () => {
    const vx = nlA.linkAddVxlan({ name: `vx${tag}`, external: true, dstPort: 8472, mtu: 1450 });
    assert.equal(vx.kind, 'vxlan');
    assert.equal(vx.mtu, 1450);
    const [j] = ipj('-n', nsA, '-d', 'link', 'show', `vx${tag}`);
    assert.equal(j.linkinfo.info_kind, 'vxlan');
    assert.equal(j.linkinfo.info_data.external, true);
    assert.equal(j.linkinfo.info_data.port, 8472);
    assert.equal(j.linkinfo.info_data.learning, false);
    assert.equal(nlA.linkDel(`vx${tag}`), true);
  });

  it('deletes routes, addresses and links; reports absence as false', () => {
    assert.equal(nlB.routeDel({ dst: 'default', gateway: '10.200.0.1', dev: peerIdx }), true);
    assert.equal(nlB.routeDel({ dst: 'default', gateway: '10.200.0.1', dev: peerIdx }), false);
    assert.equal(nlB.routeDel({ dst: 'default', family: 6 }), true);
    assert.equal(ipj('-n', nsB, 'route', 'show', 'default').length, 0);
    assert.equal(nlB.addrDel(peerIdx, '10.200.0.2/32'), true);
    assert.equal(nlB.addrDel(peerIdx, '10.200.0.2/32'), false);
    assert.ok(!nlB.addrList(peerIdx).some((a) => a.address === '10.200.0.2'));

    // move the peer back to A via linkSet(netnsFd), then delete from A
    const a = Netns.open(pathA);
    try {
      nlB.linkSet(peerIdx, { netnsFd: a.fd, name: `p${tag}` });
    } finally {
      a.close();
    }
    assert.equal(nlB.linkGet('eth0'), undefined);
    assert.ok(nlA.linkGet(`p${tag}`));
    assert.equal(nlA.linkDel(hostIf), true);
    assert.equal(nlA.linkDel(hostIf), false);
    assert.equal(nlA.linkGet(`p${tag}`), undefined); // veth peer goes with it
    assert.deepEqual(ipj('-n', nsA, 'link', 'show').map((l: { ifname: string }) => l.ifname), ['lo']);
  });
});
