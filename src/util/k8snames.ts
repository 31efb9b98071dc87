/**
 * Kubernetes' validation of label keys and values (apimachinery
 * IsQualifiedName / IsValidLabelValue), with its wording: a key is an optional
 * DNS-subdomain prefix (at most 253) and '/', then a name of at most 63
 * characters of [A-Za-z0-9._-] that starts and ends alphanumeric; a value is
 * empty or such a name. Each function returns the problems, [] when valid.
 */

const NAME_RE = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const DNS1123_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const NAME_CHARS = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

export function qualifiedNameProblems(key: string): string[] {
  const out: string[] = [];
  const parts = key.split('/');
  let name = key;
  if (parts.length === 2) {
    const [prefix] = parts;
    name = parts[1];
    if (prefix.length === 0) out.push('prefix part must be non-empty');
    else if (prefix.length > 253) out.push(`prefix part must be no more than 253 characters (it has ${prefix.length})`);
    else if (!DNS1123_SUBDOMAIN_RE.test(prefix)) out.push("prefix part must be a lowercase RFC 1123 subdomain: lowercase alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character");
  } else if (parts.length > 2) {
    return ["a qualified name must consist of an optional DNS subdomain prefix and '/', then a name"];
  }
  if (name.length === 0) out.push('name part must be non-empty');
  else if (name.length > 63) out.push(`name part must be no more than 63 characters (it has ${name.length})`);
  else if (!NAME_RE.test(name)) out.push(`name part ${NAME_CHARS}`);
  return out;
}

export function labelValueProblems(value: unknown): string[] {
  if (typeof value !== 'string') return ['must be a string'];
  if (value === '') return [];
  if (value.length > 63) return [`must be no more than 63 characters (it has ${value.length})`];
  if (!NAME_RE.test(value)) return [`a label value must be empty or ${NAME_CHARS}`];
  return [];
}

/** Kubernetes' limit on the total size of an object's annotations. */
export const MAX_ANNOTATIONS_BYTES = 256 * 1024;
