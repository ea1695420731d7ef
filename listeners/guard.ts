import type { Server as NetServer, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { peerAddress, peerPort } from './proxy-protocol.ts';

export interface GuardLimits {
  /** Sockets still in their TLS handshake, over every listener the guard watches. */
  maxPending: number;
  /** The same, from one source address. */
  maxPendingPerAddress: number;
  /** A socket that has not completed its handshake by then is closed. */
  handshakeTimeoutMs: number;
}

export interface GuardEvents {
  /** A socket closed before it was authenticated: over a cap, or too slow. */
  refused(
    listener: string,
    reason: 'pending_limit' | 'address_limit' | 'handshake_timeout',
    remoteAddress: string,
  ): void;
  /** A TLS handshake completed, `seconds` after the TCP accept. */
  handshake?(listener: string, seconds: number): void;
}

interface Pending {
  address: string;
  timer: NodeJS.Timeout;
  /** performance.now() at the TCP accept. */
  since: number;
}

/**
 * Bounds what unauthenticated peers can hold. Every TCP connection counts as *pending* from
 * accept until its TLS handshake completes (or it closes); past `maxPending` in total or
 * `maxPendingPerAddress` from one address a new socket is closed at once, and a pending one
 * is closed after `handshakeTimeoutMs` whatever Node's own handshake timer does. Authenticated
 * connections do not count, so a flood of silent sockets cannot starve the fleet's devices of
 * file descriptors or memory. One guard is shared by every listener of a process.
 */
export class ConnectionGuard {
  readonly #limits: GuardLimits;
  readonly #events: GuardEvents;
  readonly #pending = new Map<Socket, Pending>();
  readonly #byAddress = new Map<string, number>();
  /** TLS sockets by their peer's address:port: how a completed handshake finds its TCP socket. */
  readonly #byPeer = new Map<string, Socket>();

  constructor(limits: GuardLimits, events: GuardEvents) {
    this.#limits = limits;
    this.#events = events;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /** Watches a TLS (or HTTPS) server: counts on `connection`, releases on `secureConnection`. */
  attach(server: NetServer, listener: string): void {
    server.on('connection', (socket: Socket) => this.#accept(socket, listener));
    server.on('secureConnection', (tls: TLSSocket) => {
      const raw = this.#byPeer.get(peerKey(tls));
      if (raw === undefined) return;
      const p = this.#pending.get(raw);
      if (p !== undefined) this.#events.handshake?.(listener, (performance.now() - p.since) / 1000);
      this.#release(raw);
    });
  }

  #accept(socket: Socket, listener: string): void {
    const address = peerAddress(socket);
    const fromAddress = this.#byAddress.get(address) ?? 0;
    if (this.#pending.size >= this.#limits.maxPending || fromAddress >= this.#limits.maxPendingPerAddress) {
      this.#events.refused(
        listener,
        this.#pending.size >= this.#limits.maxPending ? 'pending_limit' : 'address_limit',
        address,
      );
      socket.destroy();
      return;
    }
    const timer = setTimeout(() => {
      if (!this.#pending.has(socket)) return;
      this.#events.refused(listener, 'handshake_timeout', address);
      socket.destroy();
    }, this.#limits.handshakeTimeoutMs);
    timer.unref();
    this.#pending.set(socket, { address, timer, since: performance.now() });
    this.#byAddress.set(address, fromAddress + 1);
    const key = peerKey(socket);
    this.#byPeer.set(key, socket);
    socket.once('close', () => {
      this.#release(socket);
      if (this.#byPeer.get(key) === socket) this.#byPeer.delete(key);
    });
  }

  #release(socket: Socket): void {
    const p = this.#pending.get(socket);
    if (p === undefined) return;
    clearTimeout(p.timer);
    this.#pending.delete(socket);
    const left = (this.#byAddress.get(p.address) ?? 1) - 1;
    if (left <= 0) this.#byAddress.delete(p.address);
    else this.#byAddress.set(p.address, left);
    this.#byPeer.delete(peerKey(socket));
  }
}

function peerKey(socket: Socket): string {
  return `${peerAddress(socket)}|${peerPort(socket)}`;
}
