/** Pure netlink encode/decode tests (no kernel). Captured hex is little-endian host order. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import {
  Attrs, NetlinkError, attr, align4, decodeIfAddrMsg, decodeNdMsg, decodeRtMsg, encodeAttrs, encodeIfInfoMsg,
  encodeMessage, encodeRtMsg, parseAttrs, parseError, parseMessages, payloadAttrs, sysctlPath,
  IFA_ADDRESS, IFA_CACHEINFO, IFA_FLAGS, IFA_LABEL, IFA_LOCAL, IFADDRMSG_LEN, IFINFOMSG_LEN, IFLA_IFNAME,
  IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, NDA_DST, NDA_LLADDR, NDMSG_LEN, NLA_F_NESTED,
  NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, RTA_DST,
  RTA_OIF, RTA_PREFSRC, RTA_TABLE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE, RTMSG_LEN,
  VETH_INFO_PEER,
} from '../../src/netlink';

const le = os.endianness() === 'LE' ? false : 'captured messages are little-endian';
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('netlink attributes', () => {
  it('pads every attribute to 4 bytes with zeros, nla_len unpadded', () => {
    const b = encodeAttrs([attr.str(3, 'abc'), attr.u8(7, 0xaa), attr.u16(8, 0x1234), attr.bytes(9, Buffer.alloc(0))]);
    // "abc\0" -> len 8, no pad; u8 -> len 5 + 3 pad; u16 -> len 6 + 2 pad; empty -> len 4
    assert.equal(b.length, 8 + 8 + 8 + 4);
    const list = parseAttrs(b);
    assert.deepEqual(list.map((a) => [a.type, a.data.length]), [[3, 4], [7, 1], [8, 2], [9, 0]]);
    assert.equal(b.readUInt16LE(8), 5);
    assert.deepEqual([...b.subarray(13, 16)], [0, 0, 0]); // padding
    assert.equal(b.readUInt16LE(16), 6);
    const a = new Attrs(b);
    assert.equal(a.str(3), 'abc');
    assert.equal(a.u8(7), 0xaa);
    assert.equal(a.u16(8), 0x1234);
    assert.ok(a.has(9));
    assert.equal(a.get(10), undefined);
    assert.equal(align4(5), 8);
    assert.equal(align4(8), 8);
  });

  it('big-endian 16-bit values (ports)', () => {
    const b = encodeAttrs([attr.be16(15, 8472)]);
    assert.deepEqual([...b], [6, 0, 15, 0, 0x21, 0x18, 0, 0]);
    assert.equal(new Attrs(b).be16(15), 8472);
  });

  it('nests with NLA_F_NESTED and lengths covering the children', () => {
    const b = encodeAttrs([
      attr.nest(IFLA_LINKINFO, [attr.str(IFLA_INFO_KIND, 'vxlan'), attr.nest(IFLA_INFO_DATA, [attr.u8(25, 1)])]),
    ]);
    // outer 4 + kind (4+6 -> 12) + data (4 + 8) = 28
    assert.equal(b.length, 28);
    assert.equal(b.readUInt16LE(0), 28);
    assert.equal(b.readUInt16LE(2), IFLA_LINKINFO | NLA_F_NESTED);
    const [outer] = parseAttrs(b);
    assert.equal(outer.type, IFLA_LINKINFO);
    assert.equal(outer.nested, true);
    const li = new Attrs(b).nested(IFLA_LINKINFO)!;
    assert.equal(li.str(IFLA_INFO_KIND), 'vxlan');
    assert.equal(li.nested(IFLA_INFO_DATA)!.u8(25), 1);
    assert.equal(li.list.find((x) => x.type === IFLA_INFO_DATA)!.nested, true);
  });

  it('nest with a fixed header (VETH_INFO_PEER carries an ifinfomsg)', () => {
    const b = encodeAttrs([
      attr.nest(VETH_INFO_PEER, [attr.str(IFLA_IFNAME, 'eth0'), attr.u32(IFLA_MTU, 1450)], { header: encodeIfInfoMsg({}), flagNested: false }),
    ]);
    assert.equal(b.readUInt16LE(2), VETH_INFO_PEER); // no NLA_F_NESTED
    assert.equal(b.length, 4 + IFINFOMSG_LEN + 12 + 8);
    const peer = new Attrs(b).nested(VETH_INFO_PEER, IFINFOMSG_LEN)!;
    assert.equal(peer.str(IFLA_IFNAME), 'eth0');
    assert.equal(peer.u32(IFLA_MTU), 1450);
  });

  it('rejects malformed attribute lengths', () => {
    assert.throws(() => parseAttrs(Buffer.from([2, 0, 1, 0])), /malformed netlink attribute/);
    assert.throws(() => parseAttrs(Buffer.from([12, 0, 1, 0, 0, 0])), /malformed netlink attribute/);
    assert.deepEqual(parseAttrs(Buffer.from([0, 0])), []); // trailing bytes shorter than a header
  });
});

describe('netlink messages', { skip: le }, () => {
  it('encodes nlmsghdr + family header + attributes', () => {
    const m = encodeMessage({
      type: RTM_NEWLINK,
      flags: NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
      seq: 7,
      header: encodeIfInfoMsg({ index: 3, flags: 1, change: 1 }),
      attrs: [attr.str(IFLA_IFNAME, 'lxc1')],
    });
    assert.equal(m.toString('hex'),
      '2c000000' + '1000' + '0506' + '07000000' + '00000000' + // nlmsghdr: len 44, type 16, flags 0x605, seq 7, pid 0
      '00000000' + '03000000' + '01000000' + '01000000' + // ifinfomsg
      '0900' + '0300' + '6c78633100000000'); // IFLA_IFNAME "lxc1\0" + 3 pad
    const [p] = parseMessages(m);
    assert.equal(p.type, RTM_NEWLINK);
    assert.equal(p.seq, 7);
    assert.equal(payloadAttrs(p, IFINFOMSG_LEN).str(IFLA_IFNAME), 'lxc1');
  });

  it('parses a captured ACK (error 0, capped)', () => {
    const [m] = parseMessages(hex('24000000020000012a0000003d1d00000000000020000000100005002a00000000000000'));
    assert.equal(m.type, NLMSG_ERROR);
    assert.equal(m.seq, 42);
    const e = parseError(m);
    assert.equal(e.errno, 0);
    assert.equal(e.origType, RTM_NEWLINK);
    assert.equal(e.origSeq, 42);
  });

  it('parses a captured error with extended ACK message', () => {
    const [m] = parseMessages(hex(
      '44000000020000032a0000003d1d00009bffffff3c000000180005062a00000000000000' +
      '200001004e657874686f702068617320696e76616c6964206761746577617900'));
    const e = parseError(m);
    assert.equal(e.errno, 101);
    assert.equal(e.origType, RTM_NEWROUTE);
    assert.equal(e.extAckMsg, 'Nexthop has invalid gateway');
    const err = new NetlinkError({ errno: e.errno, op: e.origType, context: 'add route 10.9.0.0/16 via 10.99.99.99', extAck: e.extAckMsg });
    assert.equal(err.message,
      'netlink RTM_NEWROUTE (add route 10.9.0.0/16 via 10.99.99.99): Network is unreachable (ENETUNREACH, errno 101): Nexthop has invalid gateway');
    assert.equal(err.code, 'ENETUNREACH');
    assert.equal(err.op, 'RTM_NEWROUTE');
  });

  it('parses a captured ENODEV without ext ack', () => {
    const e = parseError(parseMessages(hex('24000000020000012a0000003d1d0000edffffff2c000000110005002a00000000000000'))[0]);
    assert.equal(e.errno, 19);
    assert.equal(e.extAckMsg, undefined);
    const err = new NetlinkError({ errno: 19, op: 'RTM_DELLINK', context: 'delete link nope0' });
    assert.equal(err.message, 'netlink RTM_DELLINK (delete link nope0): No such device (ENODEV, errno 19)');
  });

  it('parses an uncapped error that echoes the request', () => {
    const req = encodeMessage({ type: RTM_NEWLINK, flags: 5, seq: 9, header: encodeIfInfoMsg({}), attrs: [attr.str(IFLA_IFNAME, 'x')] });
    const tlv = encodeAttrs([attr.str(1, 'oops'), attr.u32(2, 32)]);
    const payload = Buffer.concat([Buffer.from([0xef, 0xff, 0xff, 0xff]), req, tlv]); // -17
    const msg = encodeMessage({ type: NLMSG_ERROR, flags: 0x200, seq: 9, header: payload });
    const e = parseError(parseMessages(msg)[0]);
    assert.equal(e.errno, 17);
    assert.equal(e.origSeq, 9);
    assert.equal(e.extAckMsg, 'oops');
    assert.equal(e.extAckOffset, 32);
  });

  it('parses a captured address dump (RTM_NEWADDR + NLMSG_DONE)', () => {
    const msgs = parseMessages(hex(
      '4c000000140002002a0000003d1d0000020880fe01000000080001007f000001080002007f000001' +
      '070003006c6f0000080008008000000014000600ffffffffffffffffd7f00000d7f00000'));
    assert.equal(msgs.length, 1);
    const [m] = msgs;
    assert.equal(m.type, RTM_NEWADDR);
    assert.ok(m.flags & NLM_F_MULTI);
    assert.deepEqual(decodeIfAddrMsg(m.payload), { family: 2, prefixLen: 8, flags: 0x80, scope: 254, index: 1 });
    const a = payloadAttrs(m, IFADDRMSG_LEN);
    assert.deepEqual([...a.get(IFA_LOCAL)!], [127, 0, 0, 1]);
    assert.deepEqual([...a.get(IFA_ADDRESS)!], [127, 0, 0, 1]);
    assert.equal(a.str(IFA_LABEL), 'lo');
    assert.equal(a.u32(IFA_FLAGS), 0x80);
    assert.equal(a.get(IFA_CACHEINFO)!.length, 16);
    const [done] = parseMessages(hex('14000000030002002a0000003d1d000000000000'));
    assert.equal(done.type, NLMSG_DONE);
  });

  it('parses a captured multi-message route dump datagram', () => {
    const msgs = parseMessages(hex(
      '3c000000180002002a0000003d1d000002080000ff02fe020000000008000f00ff000000080001007f000000080007007f0000010800040001000000' +
      '3c000000180002002a0000003d1d000002200000ff02fe020000000008000f00ff000000080001007f000001080007007f0000010800040001000000' +
      '3c000000180002002a0000003d1d000002200000ff02fd030000000008000f00ff000000080001007fffffff080007007f0000010800040001000000'));
    assert.equal(msgs.length, 3);
    const rows = msgs.map((m) => {
      assert.equal(m.type, RTM_NEWROUTE);
      const h = decodeRtMsg(m.payload);
      const a = payloadAttrs(m, RTMSG_LEN);
      return [h.dstLen, h.table, h.protocol, h.scope, h.type, a.u32(RTA_TABLE), [...a.get(RTA_DST)!].join('.'), [...a.get(RTA_PREFSRC)!].join('.'), a.u32(RTA_OIF)];
    });
    assert.deepEqual(rows, [
      [8, 255, 2, 254, 2, 255, '127.0.0.0', '127.0.0.1', 1],
      [32, 255, 2, 254, 2, 255, '127.0.0.1', '127.0.0.1', 1],
      [32, 255, 2, 253, 3, 255, '127.255.255.255', '127.0.0.1', 1],
    ]);
  });

  it('parses a captured neighbour dump entry', () => {
    const [m] = parseMessages(hex(
      '4c0000001c0002002a0000003d1d000002000000010000008000000308000100000000000a00020002000000000100000800040000000000' +
      '140003006400000064000000640000000000000014000000030002002a0000003d1d000000000000'));
    assert.equal(m.type, RTM_NEWNEIGH);
    assert.deepEqual(decodeNdMsg(m.payload), { family: 2, index: 1, state: 0x80, flags: 0, type: 3 });
    const a = payloadAttrs(m, NDMSG_LEN);
    assert.deepEqual([...a.get(NDA_LLADDR)!], [2, 0, 0, 0, 0, 1]);
    assert.equal(a.get(NDA_DST)!.length, 4);
    assert.equal(parseMessages(hex('4c0000001c0002002a0000003d1d000002000000010000008000000308000100000000000a00020002000000000100000800040000000000140003006400000064000000640000000000000014000000030002002a0000003d1d000000000000')).length, 2);
  });

  it('rejects malformed framing', () => {
    assert.throws(() => parseMessages(hex('ff000000020000012a0000003d1d0000')), /malformed netlink message/);
    assert.throws(() => parseMessages(hex('08000000020000012a0000003d1d0000')), /malformed netlink message/);
  });

  it('rtmsg round trip', () => {
    const h = { family: 10, dstLen: 64, srcLen: 0, tos: 0, table: 254, protocol: 3, scope: 0, type: 1, flags: 4 };
    assert.deepEqual(decodeRtMsg(encodeRtMsg(h)), h);
  });
});

describe('sysctl keys', () => {
  it('maps dotted keys to /proc/sys paths, device names may contain dots', () => {
    assert.equal(sysctlPath('net.ipv4.conf.lxc1.rp_filter'), '/proc/sys/net/ipv4/conf/lxc1/rp_filter');
    assert.equal(sysctlPath('net.ipv4.conf.eth0.100.rp_filter'), '/proc/sys/net/ipv4/conf/eth0.100/rp_filter');
    assert.equal(sysctlPath('net.ipv4.ip_forward'), '/proc/sys/net/ipv4/ip_forward');
    assert.throws(() => sysctlPath('kernel.pid_max'), /not a net\.\* sysctl key/);
    assert.throws(() => sysctlPath('net.ipv4.conf.../rp_filter'), /sysctl key/);
    assert.throws(() => sysctlPath('net.ipv4..x'), /empty or relative/);
  });
});
