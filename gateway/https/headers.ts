import type { IncomingHttpHeaders } from 'node:http';

/**
 * Request headers a device may never send to the origin: the gateway sets some of them itself,
 * and the rest are what proxies conventionally use to tell an origin who the client is (its
 * certificate, its verification result, its address). An origin behind fleetgate must be able
 * to trust that none of them came from the device. Compared with `_` read as `-` and case
 * folded: WSGI, CGI and PHP origins see `Fleetgate_Assertion` and `Fleetgate-Assertion` as the
 * same variable, and so must this list.
 */
export const STRIPPED_REQUEST_HEADERS: readonly string[] = Object.freeze([
  // What the gateway itself sets (the assertion header is added from the configuration).
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-server',
  'forwarded',
  // Client certificate, as Envoy, RFC 9440, nginx, Apache, HAProxy, Traefik, IIS/ARR, AWS ALB pass it.
  'x-forwarded-client-cert',
  'client-cert',
  'client-cert-chain',
  'x-client-cert',
  'x-client-cert-chain',
  'x-client-verify',
  'x-client-dn',
  'x-client-s-dn',
  'x-client-i-dn',
  'x-client-serial',
  'x-client-fingerprint',
  'x-ssl-client-cert',
  'x-ssl-client-s-dn',
  'x-ssl-client-i-dn',
  'x-ssl-client-verify',
  'x-ssl-client-serial',
  'x-ssl-client-fingerprint',
  'x-ssl-client-dn',
  'x-ssl-cert',
  'x-ssl-client-escaped-cert',
  'ssl-client-cert',
  'ssl-client-verify',
  'ssl-client-s-dn',
  'ssl-client-i-dn',
  'x-forwarded-tls-client-cert',
  'x-forwarded-tls-client-cert-info',
  'x-arr-clientcert',
  'x-amzn-mtls-clientcert',
  'x-amzn-mtls-clientcert-leaf',
  // Client address, as proxies and CDNs pass it.
  'x-real-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-original-forwarded-for',
  // What some frameworks and proxies read as the "real" URL or method instead of the request line
  // (IIS/ASP.NET, Symfony, Laravel, Spring's HiddenHttpMethodFilter, …): the route that was
  // checked must be the one the origin serves, with the method that was checked.
  'x-original-url',
  'x-rewrite-url',
  'x-override-url',
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
]);

/** Name prefixes stripped the same way (every variant of a client-certificate header). */
const STRIPPED_PREFIXES = ['x-client-cert', 'x-ssl-client-', 'ssl-client-', 'x-forwarded-tls-client-'];

const STRIPPED = new Set(STRIPPED_REQUEST_HEADERS);

/** A header name as CGI-style origins see it: case folded, `_` read as `-`. */
export function canonicalHeaderName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

/** True when a device-sent header must not reach the origin ({@link STRIPPED_REQUEST_HEADERS}, or a copy of the assertion). */
export function isSpoofable(name: string, assertionHeader: string): boolean {
  const n = canonicalHeaderName(name);
  return (
    n === canonicalHeaderName(assertionHeader) || STRIPPED.has(n) || STRIPPED_PREFIXES.some((p) => n.startsWith(p))
  );
}

/** RFC 9110 §7.6.1: connection-specific; the gateway's own connection with the device decides them. Trailers are not forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'proxy-authenticate',
  'proxy-authorization',
]);

/**
 * The request headers the origin receives: not the spoofable ones, not the connection-specific
 * ones ({@link HOP_BY_HOP}), not `Host` or `Expect` (the origin's own Host is used, like a
 * reverse proxy's default; the gateway answers `Expect` itself).
 */
export function originRequestHeaders(
  headers: IncomingHttpHeaders,
  opts: { assertionHeader: string; token: string; clientIp: string },
): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    const n = name.toLowerCase();
    if (!isSpoofable(name, opts.assertionHeader) && !HOP_BY_HOP.has(n) && n !== 'host' && n !== 'expect')
      out[name] = value;
  }
  out[opts.assertionHeader.toLowerCase()] = opts.token;
  out['x-forwarded-for'] = opts.clientIp;
  out['x-forwarded-proto'] = 'https';
  return out;
}

/**
 * The response headers the device receives: never the assertion. The assertion header is
 * removed, and so is any header (or any single Set-Cookie) whose value carries the token,
 * whatever the origin named it.
 */
export function deviceResponseHeaders(
  headers: IncomingHttpHeaders,
  opts: { assertionHeader: string; token: string },
): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  const assertion = opts.assertionHeader.toLowerCase();
  for (const [name, value] of Object.entries(headers)) {
    const n = name.toLowerCase();
    if (n === assertion || HOP_BY_HOP.has(n) || value === undefined) continue;
    if (Array.isArray(value)) {
      const kept = value.filter((v) => !v.includes(opts.token));
      if (kept.length > 0) out[name] = kept;
    } else if (!String(value).includes(opts.token)) {
      out[name] = value;
    }
  }
  return out;
}
