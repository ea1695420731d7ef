import type { TLSSocket } from 'node:tls';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { socketIdentity } from '../../listeners/admission.ts';

/**
 * Open connections per device on the HTTPS plane. A connection past the device's cap is marked
 * at its handshake and each of its requests is refused (429 CONNECTION_LIMIT, then closed): one
 * device certificate cannot hold the plane's connections.
 */
export class ConnectionsPerDevice {
  readonly #counts = new Map<string, number>();
  readonly #over = new WeakSet<TLSSocket>();
  readonly #cap: number;

  constructor(cap: number) {
    this.#cap = cap;
  }

  opened(socket: TLSSocket): void {
    let deviceId: string;
    try {
      deviceId = socketIdentity(socket).deviceId;
    } catch {
      return; // refused at its first request, with the reason
    }
    const n = (this.#counts.get(deviceId) ?? 0) + 1;
    this.#counts.set(deviceId, n);
    if (n > this.#cap) this.#over.add(socket);
    socket.once('close', () => {
      const left = (this.#counts.get(deviceId) ?? 1) - 1;
      if (left <= 0) this.#counts.delete(deviceId);
      else this.#counts.set(deviceId, left);
    });
  }

  check(socket: TLSSocket): void {
    if (this.#over.has(socket))
      throw new FleetgateError('CONNECTION_LIMIT', `more than ${this.#cap} connections from this device`);
  }
}
