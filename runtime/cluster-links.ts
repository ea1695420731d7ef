import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { DataPaths } from '../config/paths.ts';
import { NODE_URI_PREFIX } from '../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

/**
 * The links from a node to the engines it shares with the others (NATS, PostgreSQL), and
 * whether each proves who it is. A link is `mtls` (TLS, the server's certificate verified, this
 * node's certificate presented), `loopback` (the engine is on this host: 127.0.0.0/8, ::1,
 * localhost or a Unix socket), `insecure` (neither: anyone on the network path can use or read
 * it), or `none` (no such link: SQLite, one node).
 */
export type LinkSecurity = 'mtls' | 'loopback' | 'insecure' | 'none';

/** This host's node certificate, as `fleetgate node issue` left it in the data directory. */
export interface NodeIdentity {
  role: string;
  name: string;
  notAfter: Date;
  certFile: string;
  keyFile: string;
  /** PEM: the certificate then the issuing CA; the key; the fleet root (what a node trusts). */
  cert: string;
  key: string;
  ca: string;
}

/**
 * This node's identity: `cluster.nodeCert`/`nodeKey` when set, else the data directory's
 * `node/node.crt` and `node/node.key` (undefined when there is none). NODE_CERT_INVALID when it is
 * half there or not a node certificate.
 */
export function loadNodeIdentity(
  dataPaths: DataPaths,
  files: { nodeCert: string; nodeKey: string } = { nodeCert: '', nodeKey: '' },
): NodeIdentity | undefined {
  const paths = {
    nodeCert: files.nodeCert || dataPaths.nodeCert,
    nodeKey: files.nodeKey || dataPaths.nodeKey,
    rootCert: dataPaths.rootCert,
  };
  const cert = existsSync(paths.nodeCert);
  const key = existsSync(paths.nodeKey);
  if (!cert && !key) return undefined;
  if (!cert || !key)
    throw new FleetgateError(
      'NODE_CERT_INVALID',
      `${cert ? paths.nodeCert : paths.nodeKey} exists without ${cert ? paths.nodeKey : paths.nodeCert}: issue the node certificate again (fleetgate node issue)`,
    );
  const certPem = readFileSync(paths.nodeCert, 'utf8');
  let x: X509Certificate;
  try {
    x = new X509Certificate(certPem);
  } catch (err) {
    throw new FleetgateError('NODE_CERT_INVALID', `${paths.nodeCert} is not a certificate`, { cause: err });
  }
  const uri = (x.subjectAltName ?? '').split(', ').find((e) => e.startsWith(`URI:${NODE_URI_PREFIX}`));
  if (uri === undefined)
    throw new FleetgateError('NODE_CERT_INVALID', `${paths.nodeCert} is not a fleetgate node certificate`);
  const [role = '', name = ''] = uri.slice(`URI:${NODE_URI_PREFIX}`.length).split(':');
  return {
    role,
    name,
    notAfter: new Date(x.validTo),
    certFile: paths.nodeCert,
    keyFile: paths.nodeKey,
    cert: certPem,
    key: readFileSync(paths.nodeKey, 'utf8'),
    ca: readFileSync(paths.rootCert, 'utf8'),
  };
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** NATS URLs: every one `tls://` with a node certificate here, or on loopback. */
export function natsLinkSecurity(servers: string, identity: NodeIdentity | undefined): LinkSecurity {
  const urls = servers
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (urls.length === 0) return 'none';
  const each = urls.map((u): LinkSecurity => {
    const url = new URL(u);
    if (url.protocol === 'tls:' && identity !== undefined) return 'mtls';
    return isLoopbackHost(url.hostname) ? 'loopback' : 'insecure';
  });
  if (each.includes('insecure')) return 'insecure';
  return each.every((e) => e === 'mtls') ? 'mtls' : 'loopback';
}

/**
 * A PostgreSQL URL: `mtls` with `sslmode=verify-full` (the server's name checked against the
 * fleet's CA in `sslrootcert`) and a client certificate (`sslcert`/`sslkey`); `loopback` for a local
 * server; SQLite: `none`.
 */
export function registryLinkSecurity(location: string): LinkSecurity {
  if (!/^postgres(ql)?:\/\//.test(location)) return 'none';
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    return 'insecure';
  }
  const q = url.searchParams;
  if (q.get('sslmode') === 'verify-full' && q.has('sslrootcert') && q.has('sslcert') && q.has('sslkey')) return 'mtls';
  const host = q.get('host') ?? url.hostname;
  return host.startsWith('/') || isLoopbackHost(host) ? 'loopback' : 'insecure';
}

export interface ClusterLinks {
  nats: LinkSecurity;
  registry: LinkSecurity;
  /** `cluster.allowInsecure` let an insecure link through. */
  insecureAllowed: boolean;
}

/**
 * The links' security, or CLUSTER_INSECURE when one leaves this host unauthenticated and
 * `allowInsecure` is off: a node never runs open by accident.
 */
export function checkClusterLinks(
  config: { registry: string; cluster: { nats: string; allowInsecure: boolean } },
  identity: NodeIdentity | undefined,
): ClusterLinks {
  const links = {
    nats: natsLinkSecurity(config.cluster.nats, identity),
    registry: registryLinkSecurity(config.registry),
  };
  const open = Object.entries(links)
    .filter(([, s]) => s === 'insecure')
    .map(([k]) => k);
  if (open.length > 0 && !config.cluster.allowInsecure) {
    const why = open.map((k) =>
      k === 'nats'
        ? `NATS (${config.cluster.nats}) needs tls:// URLs and this node's certificate in ${identity?.certFile ?? 'node/node.crt of the data directory'} (fleetgate node issue)`
        : 'PostgreSQL needs sslmode=verify-full with sslrootcert, sslcert and sslkey in its URL (fleetgate cluster postgres-setup prints it)',
    );
    throw new FleetgateError(
      'CLUSTER_INSECURE',
      `refusing to start with an unauthenticated link off this host: ${why.join('; ')}. docs/scale-out.md sets the links up; cluster.allowInsecure (FLEETGATE_CLUSTER_ALLOW_INSECURE=1) runs open anyway`,
    );
  }
  return { ...links, insecureAllowed: open.length > 0 };
}
