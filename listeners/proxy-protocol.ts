import { BlockList, createServer, isIP, type Server, type Socket } from 'node:net';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

/**
 * The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of a TLS listener: a TCP load
 * balancer says which address a connection came from before the device's TLS begins. Accepted
 * only from the configured balancers (`from`: addresses or CIDRs): from a balancer the header is
 * required; from anyone else a header is refused (an attacker could name any address) and the
 * connection is served with its own address. Every refusal is reported (`onRefused`).
 *
 * The address a header gives is what {@link peerAddress} returns for the connection and for the
 * TLS socket on top of it: logs, audit, refusals, the console, per-address limits.
 */
const proxied = new WeakMap<object, { address: string; port: number }>();

/** What a PROXY header said about this connection: recorded on the TCP socket, which a TLS socket on it names `_parent`. */
function proxiedOf(socket: Socket): { address: string; port: number } | undefined {
  const raw = (socket as Socket & { _parent?: object })._parent ?? socket;
  return proxied.get(raw) ?? proxied.get(socket);
}

/** The device's address: the balancer's PROXY header when there was one, else the TCP peer's. */
export function peerAddress(socket: Socket): string {
  return proxiedOf(socket)?.address ?? socket.remoteAddress ?? 'unknown';
}

export function peerPort(socket: Socket): number | undefined {
  return proxiedOf(socket)?.port ?? socket.remotePort;
}

/** The balancers a listener trusts: addresses and CIDRs (`10.0.0.0/8`, `::1`). Throws on a malformed one. */
export function trustedBalancers(entries: readonly string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const e of entries) {
    const [address = '', bits] = e.split('/');
    const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    if (isIP(address) === 0) throw new Error(`${e} is not an address or CIDR`);
    if (bits === undefined) list.addAddress(address, family);
    else list.addSubnet(address, Number(bits), family);
  }
  return list;
}

function trusted(list: BlockList, address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return isIP(v4) === 4 ? list.check(v4, 'ipv4') : list.check(address, 'ipv6');
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_MAX = 107; // "PROXY TCP6 <39> <39> <5> <5>\r\n"
const V2_MAX_BODY = 4_096; // addresses and TLVs; HAProxy sends far less

export type Parsed = { need: true } | { invalid: string } | { consumed: number; address?: string; port?: number }; // no address: LOCAL / UNKNOWN (a health check)

function parseV1(buf: Buffer): Parsed {
  const end = buf.indexOf('\r\n');
  if (end < 0) return buf.length >= V1_MAX ? { invalid: 'PROXY v1 line too long' } : { need: true };
  const parts = buf.toString('latin1', 0, end).split(' ');
  if (parts[1] === 'UNKNOWN') return { consumed: end + 2 };
  const [, proto, src, , sport] = parts;
  const family = proto === 'TCP4' ? 4 : proto === 'TCP6' ? 6 : 0;
  const port = Number(sport);
  if (parts.length !== 6 || family === 0 || isIP(src ?? '') !== family || !Number.isInteger(port) || port > 65_535)
    return { invalid: 'PROXY v1 line malformed' };
  return { consumed: end + 2, address: src!, port };
}

function parseV2(buf: Buffer): Parsed {
  if (buf.length < 16) return { need: true };
  if (buf[12]! >> 4 !== 2) return { invalid: 'PROXY v2 version' };
  const command = buf[12]! & 0x0f;
  const length = buf.readUInt16BE(14);
  if (length > V2_MAX_BODY) return { invalid: 'PROXY v2 header too long' };
  if (buf.length < 16 + length) return { need: true };
  const consumed = 16 + length;
  if (command === 0) return { consumed }; // LOCAL: the balancer's own connection (health check)
  if (command !== 1) return { invalid: 'PROXY v2 command' };
  const family = buf[13]! >> 4;
  if (family === 1 && length >= 12)
    return { consumed, address: [...buf.subarray(16, 20)].join('.'), port: buf.readUInt16BE(24) };
  if (family === 2 && length >= 36) {
    const groups = Array.from({ length: 8 }, (_, i) => buf.readUInt16BE(16 + 2 * i).toString(16));
    const address = new URL(`http://[${groups.join(':')}]`).hostname.slice(1, -1); // the canonical (compressed) form
    return { consumed, address, port: buf.readUInt16BE(48) };
  }
  if (family === 0) return { consumed }; // UNSPEC
  return { invalid: 'PROXY v2 address family' };
}

/** A PROXY header at the start of `buf`: how many bytes it takes and the address it gives. */
export function parseProxyHeader(buf: Buffer): Parsed {
  if (buf.length >= 1 && buf[0] === 0x0d) {
    const n = Math.min(buf.length, 12);
    if (!buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return { invalid: 'not a PROXY v2 signature' };
    return n < 12 ? { need: true } : parseV2(buf);
  }
  if (buf.length >= 1 && buf[0] === 0x50) {
    const n = Math.min(buf.length, 6);
    if (buf.toString('latin1', 0, n) !== 'PROXY '.slice(0, n)) return { invalid: 'not a PROXY v1 line' };
    return n < 6 ? { need: true } : parseV1(buf);
  }
  return { invalid: 'no PROXY header' };
}

export interface ProxyFrontOptions {
  balancers: BlockList;
  /** How long a connection may take to send its first bytes (a balancer's: its whole header). */
  timeoutMs: number;
  /** Connections waiting for their first bytes here, at most (the handshake guard counts them only once handed on). */
  maxPending: number;
  onRefused(reason: string, remoteAddress: string): void;
}

/**
 * A TCP server that reads the PROXY header (from a balancer) and hands the connection to
 * `target` (a TLS or HTTPS server, never listening itself). Connections from other addresses go
 * to `target` as they are — unless they begin with a PROXY header, which is refused.
 */
export function proxyFront(target: Server, options: ProxyFrontOptions): Server {
  let pending = 0;
  return createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
    if (pending >= options.maxPending) {
      options.onRefused('too many connections waiting for their first bytes', socket.remoteAddress ?? 'unknown');
      socket.destroy();
      return;
    }
    pending++;
    let waiting = true;
    const done = () => {
      if (!waiting) return;
      waiting = false;
      pending--;
      clearTimeout(timer);
      socket.removeListener('data', onData);
    };
    const fromBalancer = trusted(options.balancers, socket.remoteAddress);
    let buf: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => refuse('nothing (or no whole PROXY header) in time'), options.timeoutMs);
    const refuse = (reason: string) => {
      done();
      options.onRefused(reason, socket.remoteAddress ?? 'unknown');
      socket.destroy();
    };
    const handOver = (rest: Buffer) => {
      done();
      socket.pause();
      if (rest.length > 0) socket.unshift(rest);
      target.emit('connection', socket);
    };
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const looksProxied = buf[0] === 0x0d || buf[0] === 0x50;
      if (!fromBalancer) {
        if (looksProxied) return refuse('a PROXY header from an address that is not a configured balancer');
        return handOver(buf);
      }
      if (!looksProxied) return refuse('a connection from a balancer without its PROXY header');
      const p = parseProxyHeader(buf);
      if ('need' in p) return;
      if ('invalid' in p) return refuse(p.invalid);
      if (p.address !== undefined) proxied.set(socket, { address: p.address, port: p.port ?? 0 });
      handOver(buf.subarray(p.consumed));
    };
    socket.on('data', onData);
    socket.on('error', done);
    socket.on('close', done);
  });
}

/**
 * Makes `server` (a TLS or HTTPS server) listen through `front`: `listen`, `address` and `close`
 * act on the front, its `listening` and `error` events are the server's — so whatever binds and
 * closes the server (fastify, `listen()`) needs to know nothing of the PROXY protocol.
 */
export function listenThrough(server: Server, front: Server): void {
  const closeServer = server.close.bind(server);
  front.on('error', (err) => server.emit('error', err));
  front.on('listening', () => server.emit('listening'));
  server.listen = ((...args: Parameters<Server['listen']>) => {
    front.listen(...args);
    return server;
  }) as Server['listen'];
  server.address = () => front.address();
  server.close = ((cb?: (err?: Error) => void) => {
    front.close();
    // The server itself never listened: closing it ends its connections' life, not a socket.
    closeServer(() => cb?.());
    return server;
  }) as Server['close'];
}

/** A PROXY front for each of `servers` (the same balancers and bounds), each server listening through its front. */
export function behindProxy(servers: Server[], options: ProxyFrontOptions): void {
  for (const server of servers) listenThrough(server, proxyFront(server, options));
}

/**
 * The PROXY options for a gateway listener from `gateway.proxyProtocolFrom` (undefined: none
 * configured); refusals counted as unauthenticated closes and logged (throttled).
 */
export function proxyOptions(
  config: { proxyProtocolFrom: string[]; handshakeTimeoutMs: number; maxPendingHandshakes: number },
  deps: {
    metrics: { unauthenticatedClosed: { inc(labels: { listener: string; reason: string }): void } };
    refusals: { warn(kind: string, fields: Record<string, unknown>, message: string): void };
  },
): ProxyFrontOptions | undefined {
  let balancers: BlockList | undefined;
  try {
    balancers = trustedBalancers(config.proxyProtocolFrom);
  } catch (err) {
    throw new FleetgateError('CONFIG_INVALID', `gateway.proxyProtocolFrom: ${(err as Error).message}`);
  }
  if (balancers === undefined) return undefined;
  return {
    balancers,
    timeoutMs: config.handshakeTimeoutMs,
    maxPending: config.maxPendingHandshakes,
    onRefused: (reason, remoteAddress) => {
      deps.metrics.unauthenticatedClosed.inc({ listener: 'proxy', reason: 'proxy_protocol' });
      deps.refusals.warn(
        `proxy|${reason}`,
        { decision: 'closed', reason, remoteAddress },
        'PROXY protocol: connection refused',
      );
    },
  };
}
