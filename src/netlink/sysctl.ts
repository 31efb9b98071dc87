import * as fs from 'node:fs';
import { Netns } from './netns';

/**
 * Map a dotted sysctl key to its /proc/sys path. Interface names may contain
 * dots (eth0.100), so for net.{ipv4,ipv6}.{conf,neigh}.<dev>.<leaf> the
 * middle part is taken verbatim as the device name.
 */
export function sysctlPath(key: string): string {
  if (typeof key !== 'string' || !/^net\.[A-Za-z0-9_.@\-]+$/.test(key)) {
    throw new TypeError(`sysctl key: ${JSON.stringify(key)} is not a net.* sysctl key`);
  }
  const parts = key.split('.');
  let comps: string[];
  if (parts.length > 5 && (parts[1] === 'ipv4' || parts[1] === 'ipv6') && (parts[2] === 'conf' || parts[2] === 'neigh')) {
    comps = [...parts.slice(0, 3), parts.slice(3, -1).join('.'), parts[parts.length - 1]];
  } else {
    comps = parts;
  }
  for (const c of comps) {
    if (c === '' || c === '.' || c === '..') throw new TypeError(`sysctl key: ${JSON.stringify(key)} has an empty or relative component`);
  }
  return '/proc/sys/' + comps.join('/');
}

/**
 * Write a net.* sysctl inside `netns` (null: the agent's own namespace),
 * e.g. setSysctl(ns, 'net.ipv4.conf.eth0.rp_filter', 0). Synchronous: the
 * open+write happen on the main thread while it is switched into the namespace.
 */
export function setSysctl(netns: Netns | null, key: string, value: string | number | boolean): void {
  const p = sysctlPath(key);
  const v = typeof value === 'boolean' ? (value ? '1' : '0') : String(value);
  const write = () => {
    try {
      fs.writeFileSync(p, v + '\n');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      err.message = `sysctl ${key}=${v}${netns ? ` in netns ${netns.path}` : ''}: ${err.message}`;
      throw err;
    }
  };
  if (netns) netns.run(write);
  else write();
}

/** Read a net.* sysctl inside `netns` (null: current namespace), trimmed. */
export function getSysctl(netns: Netns | null, key: string): string {
  const p = sysctlPath(key);
  const read = () => fs.readFileSync(p, 'utf8').trim();
  return netns ? netns.run(read) : read();
}
