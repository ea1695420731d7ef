import type { IncomingHttpHeaders } from 'node:http';

/**
 * Headers a device may not set: any copy of the assertion, and every way of claiming a client
 * certificate to the origin (XFCC, RFC 9440 Client-Cert/Client-Cert-Chain, X-Client-Cert*),
 * plus forwarding headers the gateway sets itself.
 */
export function isSpoofable(name: string, assertionHeader: string): boolean {
  const n = name.toLowerCase();
  return n === assertionHeader.toLowerCase()
    || n === 'x-forwarded-client-cert' || n === 'client-cert' || n === 'client-cert-chain' || n.startsWith('x-client-cert')
    || n === 'x-forwarded-for' || n === 'x-forwarded-proto' || n === 'x-forwarded-host' || n === 'forwarded';
}

/** The request headers the origin receives. */
export function originRequestHeaders(
  headers: IncomingHttpHeaders, opts: { assertionHeader: string; token: string; clientIp: string },
): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) if (!isSpoofable(name, opts.assertionHeader)) out[name] = value;
  out[opts.assertionHeader.toLowerCase()] = opts.token;
  out['x-forwarded-for'] = opts.clientIp;
  out['x-forwarded-proto'] = 'https';
  return out;
}

/** RFC 9110 §7.6.1: connection-specific; the gateway's own connection with the device decides them. Trailers are not forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authenticate', 'proxy-authorization']);

/**
 * The response headers the device receives: never the assertion. The assertion header is
 * removed, and so is any header (or any single Set-Cookie) whose value carries the token,
 * whatever the origin named it.
 */
export function deviceResponseHeaders(headers: IncomingHttpHeaders, opts: { assertionHeader: string; token: string }): IncomingHttpHeaders {
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
