import { join } from 'node:path';

/**
 * Where everything lives inside the data directory. `registry`: the configured registry location
 * (`config.registry`: a SQLite file or a `postgres://` URL); default the data directory's file.
 */
export function dataPaths(dataDir: string, registry?: string) {
  return {
    dataDir,
    registry: registry === undefined || registry === '' ? join(dataDir, 'registry.db') : registry,
    config: join(dataDir, 'fleetgate.json'),
    rootCert: join(dataDir, 'ca', 'root.crt'),
    /**
     * The root CA key, written once by `fleetgate init` into a folder no service reads: the
     * operator moves it off the machine (the root signs only issuing CAs).
     */
    rootKey: join(dataDir, 'offline', 'root-ca.key'),
    /** Where round-1 data directories kept the root key, next to what the services load. */
    legacyRootKey: join(dataDir, 'ca', 'root.key'),
    /** Issuing CAs replaced by `fleetgate ca reissue-intermediate` (certificates only). */
    retiredDir: join(dataDir, 'ca', 'retired'),
    intermediateCert: join(dataDir, 'ca', 'intermediate.crt'),
    intermediateKey: join(dataDir, 'ca', 'intermediate.key'),
    serverCert: join(dataDir, 'tls', 'server.crt'),
    serverKey: join(dataDir, 'tls', 'server.key'),
    /** The CLI's own `operator` identity for the admin API (made on first use). */
    operatorCert: join(dataDir, 'operator', 'operator.crt'),
    operatorKey: join(dataDir, 'operator', 'operator.key'),
    /** This host's cluster identity (`fleetgate node issue`): presented to NATS and PostgreSQL. */
    nodeCert: join(dataDir, 'node', 'node.crt'),
    nodeKey: join(dataDir, 'node', 'node.key'),
  };
}
export type DataPaths = ReturnType<typeof dataPaths>;

/** A host as it goes into a URL: IPv6 literals in brackets (RFC 3986 §3.2.2). */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
