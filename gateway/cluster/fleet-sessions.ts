import type { NodeTotals, OtherNodes } from '../node-totals.ts';
import { mergeRefused, type RefusedDevice } from '../refused-devices.ts';
import { type SessionInfo, SessionTable } from '../sessions.ts';

/** What a node asks the others (implemented by {@link NatsBus}). */
export interface NodeQuestions {
  readonly node: string;
  ask<T>(question: 'connections' | 'kick' | 'overview' | 'refused', body?: unknown): Promise<T[]>;
}

export type FleetSession = SessionInfo & { node?: string };

/**
 * Live sessions as operators see and act on them, for the admin API and the console alike: this
 * node's, and in a cluster every node's that answers (each row and count then names its node).
 */
export class FleetSessions {
  readonly #sessions: SessionTable;
  readonly #kick: (deviceId: string, actor: string) => number;
  readonly #cluster: NodeQuestions | undefined;

  constructor(sessions: SessionTable, kick: (deviceId: string, actor: string) => number, cluster?: NodeQuestions) {
    this.#sessions = sessions;
    this.#kick = kick;
    this.#cluster = cluster;
  }

  get clustered(): boolean {
    return this.#cluster !== undefined;
  }

  /** This node's sessions only (no question to other nodes). */
  local(deviceId?: string): SessionInfo[] {
    return (deviceId === undefined ? this.#sessions.all() : this.#sessions.ofDevice(deviceId)).map(SessionTable.info);
  }

  /**
   * Every node's sessions (or `deviceId`'s), and (in a cluster) the nodes that answered. While the NATS link is down
   * it rejects CLUSTER_UNAVAILABLE, or with `localOnFailure` answers for this node alone.
   */
  async list(
    options: { deviceId?: string; localOnFailure?: boolean } = {},
  ): Promise<{ connections: FleetSession[]; nodes?: string[] }> {
    const local = this.local(options.deviceId);
    const cluster = this.#cluster;
    if (cluster === undefined) return { connections: local };
    // One device's sessions are asked for by id: every node answers for that device alone.
    const asked = cluster.ask<{ node: string; connections: SessionInfo[] }>(
      'connections',
      options.deviceId === undefined ? {} : { deviceId: options.deviceId },
    );
    const remote = options.localOnFailure === true ? await asked.catch(() => []) : await asked;
    return {
      connections: [
        ...local.map((c) => ({ ...c, node: cluster.node })),
        ...remote.flatMap((r) => r.connections.map((c) => ({ ...c, node: r.node }))),
      ],
      nodes: [cluster.node, ...remote.map((r) => r.node)].sort(),
    };
  }

  /** In a cluster: this node's name and the other nodes' overview figures (the console sums them); undefined on one node. */
  get others(): OtherNodes | undefined {
    const cluster = this.#cluster;
    if (cluster === undefined) return undefined;
    return { node: cluster.node, totals: () => cluster.ask<{ node: string; totals: NodeTotals }>('overview') };
  }

  /**
   * Devices still seen connecting with a certificate they may not use: this node's book (`local`),
   * merged in a cluster with every node's that answers (and which nodes those were); this node's
   * alone while the NATS link is down.
   */
  async refused(local: RefusedDevice[], limit = 100): Promise<{ refused: RefusedDevice[]; nodes?: string[] }> {
    const cluster = this.#cluster;
    if (cluster === undefined) return { refused: local.slice(0, limit) };
    const remote = await cluster.ask<{ node: string; refused: unknown }>('refused', { limit }).catch(() => []);
    const books = remote.filter((r) => Array.isArray(r.refused));
    return {
      refused: mergeRefused([local, ...books.map((r) => r.refused as unknown[])], limit),
      nodes: [cluster.node, ...books.map((r) => r.node)].sort(),
    };
  }

  /** Closes a device's sessions here, then (in a cluster) on every node that answers. */
  async kick(deviceId: string, actor: string): Promise<{ closed: number; nodes?: { node: string; closed: number }[] }> {
    const closed = this.#kick(deviceId, actor);
    const cluster = this.#cluster;
    if (cluster === undefined) return { closed };
    const nodes = [
      { node: cluster.node, closed },
      ...(await cluster.ask<{ node: string; closed: number }>('kick', { deviceId, actor })),
    ];
    return { closed: nodes.reduce((n, r) => n + r.closed, 0), nodes };
  }
}
