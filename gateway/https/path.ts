import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';

/** A request target after {@link normalizeTarget}: the one path routing, policy and the origin all see. */
export interface NormalizedTarget {
  /** Absolute path, dot segments resolved, each segment percent-encoded canonically. */
  path: string;
  /** The query as sent, without its `?` ('' when absent). */
  query: string;
}

const refuse = (why: string, raw: string) =>
  new FleetgateError('PATH_INVALID', `request path refused: ${why}`, { detail: { path: raw.slice(0, 200) } });

/** What stays literal in a canonical segment: RFC 3986 unreserved and sub-delims, ':' and '@' (pchar). */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/%(2[146-9ACB]|3[AB]|3D|40)/gi, (m) => decodeURIComponent(m));
}

/**
 * The request path is normalised **once, before route matching**, and the upstream URL is built
 * from the result, so the route that was checked is the path the origin receives:
 *
 * 1. refuse what has no single meaning across servers — a backslash (some origins read it as
 *    `/`), an encoded `/` or `\` (`%2F`, `%5C`), a `;` (raw or `%3B`: servlet containers cut
 *    path parameters there), NUL or other control characters (raw or encoded), bad
 *    percent-encoding;
 * 2. percent-decode each segment, resolve `.` and `..` (RFC 3986 §5.2.4); a `..` above the root
 *    is refused; empty segments (`//`) are merged;
 * 3. re-encode each segment canonically.
 *
 * `/api/x\..\..\upload\a` is refused (400 PATH_INVALID); `/api/%2e%2e/upload/a` becomes
 * `/upload/a` and is matched (and authorized) as such.
 */
export function normalizeTarget(rawUrl: string): NormalizedTarget {
  const { rawPath, query } = splitTarget(rawUrl);
  // The common case — every segment already canonical (only literal pchar, no '%', no '.' or
  // '..' segment, no empty segment) — is its own normal form: one regular expression instead of
  // decoding and re-encoding each segment (path.test.ts checks both ways agree on random paths).
  if (CANONICAL.test(rawPath)) {
    checkQuery(query, rawUrl);
    return { path: rawPath, query };
  }
  return normalizeTargetFully(rawUrl);
}

/** The raw path and the query (without its `?`; '' when absent) of a request target. */
function splitTarget(rawUrl: string): { rawPath: string; query: string } {
  const q = rawUrl.indexOf('?');
  return q === -1 ? { rawPath: rawUrl, query: '' } : { rawPath: rawUrl.slice(0, q), query: rawUrl.slice(q + 1) };
}

/** A query is passed on as sent, but never with a control character in it. */
function checkQuery(query: string, rawUrl: string): void {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(query)) throw refuse('control character in the query', rawUrl);
}

/**
 * Absolute path of canonical segments: RFC 3986 pchar without percent-encoding and without `;`,
 * none of them empty, `.` or `..`; optionally a trailing `/`.
 */
const CANONICAL = /^(?:(?:\/(?!\.\.?(?:\/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+\/?|\/)$/;

/** {@link normalizeTarget} without its shortcut for already canonical paths (exported for the test that they agree). */
export function normalizeTargetFully(rawUrl: string): NormalizedTarget {
  const { rawPath, query } = splitTarget(rawUrl);
  if (!rawPath.startsWith('/')) throw refuse('not an absolute path', rawUrl);
  if (rawPath.includes('\\')) throw refuse('backslash', rawUrl);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f]/.test(rawPath)) throw refuse('control character or space', rawUrl);
  if (/%(2f|5c|00|[01][0-9a-f]|7f)/i.test(rawPath))
    throw refuse('encoded slash, backslash or control character', rawUrl);
  // Servlet containers (Tomcat, Jetty, Spring) cut path parameters at `;`, so `/public/..;/admin`
  // is `/admin` to them and `/public/..;` to us: a path with `;` (raw or encoded) has no single meaning.
  if (/;|%3b/i.test(rawPath)) throw refuse('";" (path parameter) in the path', rawUrl);
  checkQuery(query, rawUrl);
  const out: string[] = [];
  for (const raw of rawPath.split('/').slice(1)) {
    let segment: string;
    try {
      segment = decodeURIComponent(raw);
    } catch {
      throw refuse('bad percent-encoding', rawUrl);
    }
    if (segment === '' || segment === '.') continue;
    if (segment === '..') {
      if (out.length === 0) throw refuse('".." above the root', rawUrl);
      out.pop();
      continue;
    }
    out.push(encodeSegment(segment));
  }
  const trailing =
    out.length > 0 && (rawPath.endsWith('/') || /\/\.{1,2}$/.test(rawPath) || /\/%2e(%2e)?$/i.test(rawPath));
  return { path: `/${out.join('/')}${trailing ? '/' : ''}`, query };
}
