#!/usr/bin/env node
/*
 * Generate src/datapath/maps.gen.ts from the BTF of compiled BPF objects.
 *
 *   node scripts/gen-codecs.js [--check] [--out FILE] [obj.o ...]
 *
 * Objects default to bpf/*.o. For each struct in STRUCTS present in any object
 * (missing ones are skipped; structs they embed are added) it emits a TS
 * interface and a Codec<T> `<camelName>Codec` that encodes/decodes at the BTF
 * offsets, plus STRUCT_SIZES and FIELD_OFFSETS. Field names are the C names.
 *
 * Field mapping:
 *   __u8/__u16/__u32 (and signed, enums)  -> number, little-endian (host order)
 *   __u64/__s64                            -> bigint (numbers accepted on encode)
 *   __be16/__be32 (BTF keeps the typedef)  -> number holding the *host* value;
 *       encoded big-endian (writeUInt16BE/writeUInt32BE), so the bytes in the map
 *       are in network order exactly as the C code expects. __be64 -> bigint BE.
 *   __u8 x[N] (byte arrays)                -> Buffer (shorter input is zero-padded)
 *   other arrays                           -> T[] of N elements
 *   nested named structs                   -> nested interface / codec
 *   unions, anonymous aggregates, pointers -> Buffer of the member's size
 *   pad/reserved fields                    -> optional (encoded as zero if absent)
 * Bytes not covered by any member (implicit padding) are always zero.
 *
 * --check: exit 1 with a diff if FILE differs from what would be generated.
 * Needs the native addon (native/build/Release/membrane.node or $MEMBRANE_NATIVE).
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const STRUCTS = [
  'endpoint_key', 'endpoint_info', 'ipcache_key', 'ipcache_value', 'policy_key', 'policy_value',
  'ct_key', 'ct_value', 'metrics_value', 'node_config', 'event_hdr', 'drop_event', 'ep_config', 'trace_event', 'policy_verdict_event', 'monitor_config', 'lb_service_key', 'lb_service_value', 'lb_backend', 'lb_revnat', 'lb_affinity_key', 'lb_affinity_value', 'lb_sock_revnat_key', 'lb_sock_revnat_value',
];

function usage(msg) {
  if (msg) process.stderr.write(`gen-codecs: ${msg}\n`);
  process.stderr.write('usage: node scripts/gen-codecs.js [--check] [--out FILE] [obj.o ...]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { check: false, out: path.join(ROOT, 'src/datapath/maps.gen.ts'), objs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--check') o.check = true;
    else if (a === '--out') o.out = path.resolve(argv[++i] || usage('--out needs a file'));
    else if (a === '-h' || a === '--help') usage();
    else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else o.objs.push(path.resolve(a));
  }
  if (!o.objs.length) {
    const dir = path.join(ROOT, 'bpf');
    o.objs = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.o')).sort().map((f) => path.join(dir, f)) : [];
    if (!o.objs.length) usage('no objects given and no bpf/*.o found (build the BPF objects first)');
  }
  return o;
}

function loadNative() {
  const p = process.env.MEMBRANE_NATIVE ? path.resolve(process.env.MEMBRANE_NATIVE) : path.join(ROOT, 'native/build/Release/membrane.node');
  try {
    return require(p);
  } catch (e) {
    usage(`cannot load the native addon ${p}: ${e.message}`);
  }
}

const pascal = (s) => s.split('_').filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join('');
const camel = (s) => { const p = pascal(s); return p[0].toLowerCase() + p.slice(1); };
const isPad = (name) => /^_*(pad|reserved|unused)\d*$/i.test(name);

/** Layout signature, to detect objects that disagree about a struct. */
function signature(t) {
  const ty = (x) => `${x.kind}:${x.name}:${x.size}:${(x.typedefs || []).join('/')}${x.elemType ? '[' + x.nelems + ']' + ty(x.elemType) : ''}`;
  return `${t.size}{${t.members.map((m) => `${m.name}@${m.bitOffset}/${m.bitSize}:${ty(m.type)}`).join(',')}}`;
}

function collect(native, objs) {
  const byName = new Map(); // name -> {struct, from}
  for (const obj of objs) {
    for (const s of native.btfStructs(obj)) {
      const prev = byName.get(s.name);
      if (!prev) byName.set(s.name, { struct: s, from: obj });
      else if (signature(prev.struct) !== signature(s)) {
        throw new Error(`struct ${s.name} differs between ${path.relative(ROOT, prev.from)} and ${path.relative(ROOT, obj)} (rebuild the objects from the same headers)`);
      }
    }
  }
  return byName;
}

// ---- type classification ----

function classify(t, where) {
  const tds = t.typedefs || [];
  const be = tds.find((n) => /^__be(16|32|64)$/.test(n));
  if (t.kind === 'int' || t.kind === 'enum') {
    if (![1, 2, 4, 8].includes(t.size)) throw new Error(`${where}: unsupported integer size ${t.size}`);
    return { k: 'int', size: t.size, signed: !!t.signed, be: !!be, cname: tds[0] || t.name };
  }
  if (t.kind === 'array') {
    const e = t.elemType;
    if ((e.kind === 'int' || e.kind === 'enum') && e.size === 1) return { k: 'bytes', size: t.size, n: t.nelems, cname: `${(e.typedefs || [])[0] || e.name}[${t.nelems}]` };
    const elem = classify(e, `${where}[]`);
    return { k: 'array', size: t.size, n: t.nelems, elem, stride: e.size, cname: `${elem.cname}[${t.nelems}]` };
  }
  if (t.kind === 'struct' && t.name) return { k: 'struct', size: t.size, name: t.name, cname: `struct ${t.name}` };
  return { k: 'raw', size: t.size, cname: `${t.kind} ${t.name || '(anonymous)'}` };
}

function tsType(c) {
  switch (c.k) {
    case 'int': return c.size === 8 ? 'bigint' : 'number';
    case 'bytes': case 'raw': return 'Buffer';
    case 'array': return `${tsType(c.elem)}[]`;
    case 'struct': return pascal(c.name);
  }
}

function intSpec(c) {
  return `${c.size}, ${c.signed}, ${c.be}`;
}

/** Encode statement for value expression `v` of class c at byte offset expression `at`. */
function encStmt(c, v, at, field, depth, optional) {
  const f = JSON.stringify(field);
  switch (c.k) {
    case 'int': return optional ? `if (${v} !== undefined) wint(b, ${at}, ${v}, ${intSpec(c)}, ${f});` : `wint(b, ${at}, ${v}, ${intSpec(c)}, ${f});`;
    case 'bytes': case 'raw': return `wbytes(b, ${at}, ${v}, ${c.size}, ${optional}, ${f});`;
    case 'struct': return `${camel(c.name)}Codec.encode(req(${v}, ${f}), b, ${at});`;
    case 'array': {
      const i = `i${depth}`;
      const inner = encStmt(c.elem, `a${depth}[${i}]`, `${at} + ${i} * ${c.stride}`, `${field}[]`, depth + 1, false);
      const head = `const a${depth} = ${optional ? `${v} ?? []` : `warr(${v}, ${c.n}, ${f})`};`;
      return `{ ${head} for (let ${i} = 0; ${i} < a${depth}.length; ${i}++) ${inner} }`;
    }
  }
}

function decExpr(c, at, depth) {
  switch (c.k) {
    case 'int': return `rint(b, ${at}, ${intSpec(c)})`;
    case 'bytes': case 'raw': return `Buffer.from(b.subarray(${at}, ${at} + ${c.size}))`;
    case 'struct': return `${camel(c.name)}Codec.decode(b, ${at})`;
    case 'array': {
      const i = `i${depth}`;
      return `Array.from({ length: ${c.n} }, (_, ${i}) => ${decExpr(c.elem, `${at} + ${i} * ${c.stride}`, depth + 1)})`;
    }
  }
}

function structDeps(c, out) {
  if (c.k === 'struct') out.push(c.name);
  if (c.k === 'array') structDeps(c.elem, out);
}

function genStruct(s) {
  const I = pascal(s.name);
  const C = `${camel(s.name)}Codec`;
  const fields = s.members.map((m) => {
    const where = `${s.name}.${m.name}`;
    if (!m.name) throw new Error(`${s.name}: anonymous members are not supported`);
    if (m.bitSize || m.bitOffset % 8) throw new Error(`${where}: bitfields are not supported`);
    return { name: m.name, off: m.bitOffset / 8, c: classify(m.type, where), pad: isPad(m.name) };
  });
  const lines = [];
  lines.push(`/** struct ${s.name} (${s.size} bytes) */`);
  lines.push(`export interface ${I} {`);
  for (const f of fields) {
    const be = f.c.k === 'int' && f.c.be ? ', network byte order in memory: host value here' : '';
    lines.push(`  /** ${f.c.cname} @${f.off}${be} */`);
    lines.push(`  ${f.name}${f.pad ? '?' : ''}: ${tsType(f.c)};`);
  }
  lines.push('}');
  lines.push('');
  lines.push(`export const ${C}: Codec<${I}> = {`);
  lines.push(`  size: ${s.size},`);
  lines.push(`  encode(v: ${I}, out?: Buffer, offset = 0): Buffer {`);
  lines.push(`    const b = target(${s.size}, out, offset);`);
  lines.push(`    const o = out ? offset : 0;`);
  for (const f of fields) lines.push(`    ${encStmt(f.c, `v.${f.name}`, `o + ${f.off}`, `${s.name}.${f.name}`, 0, f.pad)}`);
  lines.push('    return b;');
  lines.push('  },');
  lines.push(`  decode(b: Buffer, o = 0): ${I} {`);
  lines.push(`    if (o + ${s.size} > b.length) throw new RangeError(\`struct ${s.name}: need ${s.size} bytes at offset \${o}, buffer has \${b.length}\`);`);
  lines.push('    return {');
  for (const f of fields) lines.push(`      ${f.name}: ${decExpr(f.c, `o + ${f.off}`, 0)},`);
  lines.push('    };');
  lines.push('  },');
  lines.push('};');
  const deps = [];
  fields.forEach((f) => structDeps(f.c, deps));
  return { text: lines.join('\n'), deps, offsets: fields.map((f) => [f.name, f.off]) };
}

const PRELUDE = `/* eslint-disable */
// Code generated by scripts/gen-codecs.js from the BTF of the compiled BPF
// objects (bpf/include/maps.h). DO NOT EDIT.
// Regenerate: node scripts/gen-codecs.js   Verify: node scripts/gen-codecs.js --check
//
// Integers are host (little-endian) order, except fields typed __be16/__be32 in C:
// their TS value is the host value and the codec writes/reads them big-endian, so
// memory holds network byte order. __u64 fields are bigint. Byte arrays are Buffers
// (shorter input is zero-padded). pad fields are optional and default to zero.
import type { Codec } from '__CODEC__';

function target(size: number, out: Buffer | undefined, offset: number): Buffer {
  if (!out) return Buffer.alloc(size);
  if (offset < 0 || offset + size > out.length) throw new RangeError(\`codec: \${size} bytes at offset \${offset} do not fit a \${out.length}-byte buffer\`);
  out.fill(0, offset, offset + size);
  return out;
}

function req<T>(v: T | undefined, field: string): T {
  if (v === undefined || v === null) throw new TypeError(\`\${field}: missing\`);
  return v;
}

function wint(b: Buffer, at: number, v: number | bigint | undefined, size: number, signed: boolean, be: boolean, field: string): void {
  if (size === 8) {
    if (typeof v !== 'bigint' && typeof v !== 'number') throw new TypeError(\`\${field}: expected bigint, got \${typeof v}\`);
    const x = BigInt(v);
    if (signed) be ? b.writeBigInt64BE(x, at) : b.writeBigInt64LE(x, at);
    else be ? b.writeBigUInt64BE(x, at) : b.writeBigUInt64LE(x, at);
    return;
  }
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(\`\${field}: expected an integer, got \${typeof v === 'number' ? v : typeof v}\`);
  const bits = size * 8;
  const min = signed ? -(2 ** (bits - 1)) : 0;
  const max = signed ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  if (v < min || v > max) throw new RangeError(\`\${field}: \${v} out of range for \${signed ? 's' : 'u'}\${bits}\`);
  if (size === 1) signed ? b.writeInt8(v, at) : b.writeUInt8(v, at);
  else if (size === 2) signed ? (be ? b.writeInt16BE(v, at) : b.writeInt16LE(v, at)) : be ? b.writeUInt16BE(v, at) : b.writeUInt16LE(v, at);
  else signed ? (be ? b.writeInt32BE(v, at) : b.writeInt32LE(v, at)) : be ? b.writeUInt32BE(v, at) : b.writeUInt32LE(v, at);
}

function rint(b: Buffer, at: number, size: 1 | 2 | 4, signed: boolean, be: boolean): number;
function rint(b: Buffer, at: number, size: 8, signed: boolean, be: boolean): bigint;
function rint(b: Buffer, at: number, size: number, signed: boolean, be: boolean): number | bigint {
  switch (size) {
    case 1: return signed ? b.readInt8(at) : b.readUInt8(at);
    case 2: return signed ? (be ? b.readInt16BE(at) : b.readInt16LE(at)) : be ? b.readUInt16BE(at) : b.readUInt16LE(at);
    case 4: return signed ? (be ? b.readInt32BE(at) : b.readInt32LE(at)) : be ? b.readUInt32BE(at) : b.readUInt32LE(at);
    default: return signed ? (be ? b.readBigInt64BE(at) : b.readBigInt64LE(at)) : be ? b.readBigUInt64BE(at) : b.readBigUInt64LE(at);
  }
}

function wbytes(b: Buffer, at: number, v: Uint8Array | undefined, n: number, optional: boolean, field: string): void {
  if (v === undefined || v === null) {
    if (optional) return;
    throw new TypeError(\`\${field}: missing (expected a Buffer of up to \${n} bytes)\`);
  }
  if (!(v instanceof Uint8Array)) throw new TypeError(\`\${field}: expected a Buffer\`);
  if (v.length > n) throw new RangeError(\`\${field}: \${v.length} bytes do not fit \${n}\`);
  b.set(v, at);
}

function warr<T>(v: T[] | undefined, n: number, field: string): T[] {
  if (!Array.isArray(v)) throw new TypeError(\`\${field}: expected an array of \${n}\`);
  if (v.length > n) throw new RangeError(\`\${field}: \${v.length} elements do not fit \${n}\`);
  return v;
}
`;

function generate(byName, outFile) {
  const order = [];
  const seen = new Set();
  const missing = [];
  const visit = (name, stack) => {
    if (seen.has(name)) return;
    const e = byName.get(name);
    if (!e) {
      if (stack.length) throw new Error(`struct ${name} (used by ${stack[stack.length - 1]}) has no BTF`);
      missing.push(name);
      return;
    }
    seen.add(name);
    const g = genStruct(e.struct);
    for (const d of g.deps) visit(d, [...stack, name]);
    order.push({ name, size: e.struct.size, text: g.text, offsets: g.offsets });
  };
  for (const n of STRUCTS) visit(n, []);
  let rel = path.relative(path.dirname(outFile), path.join(ROOT, 'src/bpf/codec')).split(path.sep).join('/');
  if (!rel.startsWith('.')) rel = './' + rel;
  const parts = [PRELUDE.replace('__CODEC__', rel)];
  for (const s of order) parts.push(s.text);
  parts.push(`/** sizeof() of every generated struct, from BTF. */\nexport const STRUCT_SIZES = {\n${order.map((s) => `  ${s.name}: ${s.size},`).join('\n')}\n} as const;`);
  parts.push(
    `/** Byte offset of every member, from BTF (for readers that decode in place, without a codec). */\nexport const FIELD_OFFSETS = {\n${order
      .map((s) => `  ${s.name}: { ${s.offsets.map(([n, o]) => `${n}: ${o}`).join(', ')} },`)
      .join('\n')}\n} as const;`,
  );
  return { text: parts.join('\n\n') + '\n', missing, structs: order.map((s) => s.name) };
}

function diff(a, b) {
  const al = a.split('\n');
  const bl = b.split('\n');
  const out = [];
  let i = 0;
  while (i < Math.max(al.length, bl.length) && out.length < 40) {
    if (al[i] !== bl[i]) {
      if (al[i] !== undefined) out.push(`${i + 1}- ${al[i]}`);
      if (bl[i] !== undefined) out.push(`${i + 1}+ ${bl[i]}`);
    }
    i++;
  }
  return out.join('\n');
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  for (const o of opts.objs) if (!fs.existsSync(o)) usage(`object ${o} does not exist`);
  const native = loadNative();
  let res;
  try {
    res = generate(collect(native, opts.objs), opts.out);
  } catch (e) {
    process.stderr.write(`gen-codecs: ${e.message}\n`);
    process.exit(2);
  }
  if (res.missing.length) process.stderr.write(`gen-codecs: skipped (no BTF in the given objects): ${res.missing.join(', ')}\n`);
  const rel = path.relative(process.cwd(), opts.out);
  if (opts.check) {
    const cur = fs.existsSync(opts.out) ? fs.readFileSync(opts.out, 'utf8') : '';
    if (cur !== res.text) {
      process.stderr.write(`gen-codecs: ${rel} is out of date (run: node scripts/gen-codecs.js). Differences (- on disk, + generated):\n${cur ? diff(cur, res.text) : '(file missing)'}\n`);
      process.exit(1);
    }
    process.stdout.write(`gen-codecs: ${rel} is up to date (${res.structs.length} structs)\n`);
    return;
  }
  fs.mkdirSync(path.dirname(opts.out), { recursive: true });
  fs.writeFileSync(opts.out, res.text);
  process.stdout.write(`gen-codecs: wrote ${rel} (${res.structs.length} structs)\n`);
}

main();
