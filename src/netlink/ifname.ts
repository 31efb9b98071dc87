/**
 * Interface names as Linux accepts them (net/core/dev.c dev_valid_name): not
 * empty, at most 15 bytes (IFNAMSIZ - 1), not "." or "..", and no '/', ':' or
 * whitespace byte (the kernel's isspace(): \t \n \v \f \r, space and 0xa0).
 * Pure TypeScript, so the CNI plugin bundle can use it without the addon.
 */
export const IFNAMSIZ = 16;

/** Why `name` is not a valid interface name, or undefined when it is. */
export function ifnameProblem(name: string): string | undefined {
  const show = JSON.stringify(name);
  if (name === '') return 'must not be empty';
  const bytes = Buffer.from(name, 'utf8');
  if (bytes.length >= IFNAMSIZ) return `${show} is ${bytes.length} bytes long (at most ${IFNAMSIZ - 1})`;
  if (name === '.' || name === '..') return `${show} is not a valid interface name`;
  for (const b of bytes) {
    if (b === 0x2f || b === 0x3a) return `${show} contains '${String.fromCharCode(b)}', which an interface name cannot contain`;
    if (b === 0x20 || (b >= 0x09 && b <= 0x0d) || b === 0xa0 || b === 0) return `${show} contains whitespace, which an interface name cannot contain`;
  }
  return undefined;
}
