/**
 * Nesting depth of parsed documents, measured without recursion: a document
 * nested thousands deep gets a clear error instead of a stack overflow in
 * whatever walks it later (validation, cloning, serialisation).
 */

/** Deepest nesting accepted in a resource or request body (Kubernetes objects need about 15). */
export const MAX_DEPTH = 100;

/**
 * The path of the first value nested deeper than `max` levels (objects and
 * arrays count), or undefined when the document is within the limit.
 */
export function tooDeep(value: unknown, max = MAX_DEPTH, root = ''): string | undefined {
  const stack: { v: unknown; depth: number; path: string }[] = [{ v: value, depth: 0, path: root }];
  while (stack.length) {
    const { v, depth, path } = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= max) return path || '(top level)';
    if (Array.isArray(v)) v.forEach((x, i) => stack.push({ v: x, depth: depth + 1, path: `${path}[${i}]` }));
    else for (const [k, x] of Object.entries(v)) stack.push({ v: x, depth: depth + 1, path: path ? `${path}.${k}` : k });
  }
  return undefined;
}

/** Show a value in an error message, shortened: `"1400"`, `12345`, `{"a":1,...}`. */
export function showValue(v: unknown, max = 80): string {
  let s: string;
  try {
    s = v === undefined ? 'undefined' : JSON.stringify(v);
  } catch {
    s = String(v);
  }
  if (s === undefined) s = String(v);
  return s.length > max ? `${s.slice(0, max)}...(${s.length} characters)` : s;
}
