/**
 * Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
 * Software Network Load Balancer", NSDI 2016, section 3.4): each backend gets a
 * permutation of the M table slots from two hashes of its name (offset, skip);
 * backends take turns claiming their next preferred free slot until the table is
 * full. When one backend of N changes, only about 1/N of the slots move.
 */
import * as crypto from 'node:crypto';

function h(seed: string, name: string): bigint {
  return crypto.createHash('sha256').update(seed).update('\0').update(name).digest().readBigUInt64BE(0);
}

/** The Maglev lookup table: M entries, each an index into `names` (-1 when there is no backend). */
export function maglevTable(names: string[], m: number): number[] {
  const table = new Array<number>(m).fill(-1);
  if (names.length === 0) return table;
  const M = BigInt(m);
  const offset = names.map((n) => Number(h('offset', n) % M));
  const skip = names.map((n) => Number((h('skip', n) % (M - 1n)) + 1n));
  const next = new Array<number>(names.length).fill(0);
  let filled = 0;
  for (;;) {
    for (let i = 0; i < names.length; i++) {
      let c = (offset[i] + next[i] * skip[i]) % m;
      while (table[c] >= 0) {
        next[i]++;
        c = (offset[i] + next[i] * skip[i]) % m;
      }
      table[c] = i;
      next[i]++;
      if (++filled === m) return table;
    }
  }
}
