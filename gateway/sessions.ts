import type { PeerIdentity } from '../firmware-sdk/protocol/certificate-identity.ts';
import type { ErrorCode } from '../firmware-sdk/protocol/errors.ts';
import type { DeviceRecord } from '../provisioning/registry/records.ts';
import type { TopicScope } from './policy/topics.ts';

export type Transport = 'mqtts' | 'wss' | 'https';

/** One admitted connection, from the handshake until it closes. */
export interface Session {
  readonly id: number;
  readonly identity: PeerIdentity;
  device: DeviceRecord;
  readonly transport: Transport;
  readonly remoteAddress: string;
  readonly since: number;
  scope: TopicScope;
  /** Topic → may publish, for the topics this session used lately (cleared when its scope changes). */
  publishable?: Map<string, boolean>;
  /** Set once the session is cut: every later packet is refused with this code. */
  cut: ErrorCode | undefined;
  /** Closes the transport. */
  close(): void;
}

export interface SessionInfo {
  id: number;
  deviceId: string;
  type: string;
  fleet: string;
  transport: Transport;
  remoteAddress: string;
  since: string;
  serial: string;
}

/**
 * Live sessions, indexed by device: the in-memory view the per-packet checks read and the
 * live-revocation watcher walks.
 */
export class SessionTable {
  readonly #byId = new Map<number, Session>();
  readonly #byDevice = new Map<string, Set<Session>>();
  #next = 1;

  nextId(): number {
    return this.#next++;
  }

  /** A new session (not yet added): numbered, started now, not cut. */
  create(init: Pick<Session, 'identity' | 'device' | 'transport' | 'remoteAddress' | 'scope' | 'close'>): Session {
    return { ...init, id: this.nextId(), since: Date.now(), cut: undefined };
  }

  add(session: Session): void {
    this.#byId.set(session.id, session);
    let set = this.#byDevice.get(session.device.id);
    if (set === undefined) this.#byDevice.set(session.device.id, (set = new Set()));
    set.add(session);
  }

  remove(session: Session): boolean {
    if (!this.#byId.delete(session.id)) return false;
    const set = this.#byDevice.get(session.device.id);
    set?.delete(session);
    if (set?.size === 0) this.#byDevice.delete(session.device.id);
    return true;
  }

  ofDevice(deviceId: string): Session[] {
    return [...(this.#byDevice.get(deviceId) ?? [])];
  }

  all(): Session[] {
    return [...this.#byId.values()];
  }

  get size(): number {
    return this.#byId.size;
  }

  static info(s: Session): SessionInfo {
    return {
      id: s.id,
      deviceId: s.device.id,
      type: s.device.type,
      fleet: s.device.fleet,
      transport: s.transport,
      remoteAddress: s.remoteAddress,
      since: new Date(s.since).toISOString(),
      serial: s.identity.serial,
    };
  }
}
