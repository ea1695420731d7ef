import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { NodeIdentity } from '../../runtime/cluster-links.ts';
import type { Metrics } from '../metrics.ts';
import type { MqttPlane } from '../mqtt/plane.ts';
import { NatsBus, type NatsLink } from './bus.ts';
import { JetStreamState } from './jetstream.ts';

/** The NATS link: `tls://` URLs present this node's certificate and trust the fleet's root only. */
function natsLink(servers: string, identity: NodeIdentity | undefined): NatsLink {
  if (!servers.includes('tls://')) return { servers };
  if (identity === undefined)
    throw new FleetgateError(
      'NODE_CERT_INVALID',
      `tls:// NATS URLs need this node's certificate in the data directory (node/node.crt, node/node.key): run \`fleetgate node issue <name> --role gateway\``,
    );
  if (identity.role !== 'gateway')
    throw new FleetgateError(
      'NODE_CERT_INVALID',
      `this node's certificate is for the ${identity.role} role; a gateway node needs one issued with --role gateway`,
    );
  return { servers, tls: { ca: identity.ca, cert: identity.cert, key: identity.key } };
}

/**
 * A node joining the cluster: its link to NATS (messages, takeovers, retained changes from the
 * other nodes go to the MQTT plane once it exists), then — once the plane is up — the retained
 * messages the other nodes hold, before any device can subscribe here.
 */
export class ClusterJoin {
  readonly bus: NatsBus;
  /** `cluster.sessions: jetstream`: persistent sessions and retained messages on JetStream. */
  state: JetStreamState | undefined;
  readonly #log: Logger;
  /** Topics whose retained message changed live while this node fetched the cluster's snapshot: the live change wins. */
  #changedWhileSyncing: Set<string> | undefined = new Set();

  private constructor(bus: NatsBus, log: Logger, changed: Set<string>) {
    this.bus = bus;
    this.#log = log;
    this.#changedWhileSyncing = changed;
  }

  static async connect(
    config: FleetgateConfig,
    deps: { log: Logger; metrics: Metrics; plane: () => MqttPlane | undefined; identity: NodeIdentity | undefined },
  ): Promise<ClusterJoin> {
    const { log, metrics, plane, identity } = deps;
    const node = config.cluster.node;
    let join: ClusterJoin | undefined;
    const changed = new Set<string>();
    const bus = await NatsBus.connect(
      natsLink(config.cluster.nats, identity),
      node,
      log.child({ component: 'cluster', node }),
      {
        message: (m) => plane()?.routeRemote(m),
        shared: (key, m) => plane()?.routeShared(key, m),
        link: (state) => metrics.clusterLink.set(state === 'up' ? 1 : 0),
        session: (clientId, other) => plane()?.takenOverElsewhere(clientId, other),
        retained: (m) => {
          if (join === undefined) changed.add(m.topic);
          else join.#changedWhileSyncing?.add(m.topic);
          plane()?.retainRemote(m);
        },
      },
      { retainedTotal: config.mqtt.retainedTotal, retainedBytesTotal: config.mqtt.retainedBytesTotal },
      config.cluster.interest === 'announced',
    );
    join = new ClusterJoin(bus, log, changed);
    if (config.cluster.sessions === 'jetstream') {
      const q = config.mqtt;
      join.state = await JetStreamState.open(
        bus.connection,
        node,
        {
          replicas: config.cluster.replicas,
          nodeTimeoutMs: config.cluster.nodeTimeoutMs,
          maxQueued: Math.max(
            q.maxQueuedMessages,
            ...Object.values(config.gateway.limits).map((l) => l.maxQueuedMessages ?? 0),
          ),
          maxAgeMs: q.sessionExpiryMs,
        },
        log.child({ component: 'cluster', node }),
        {
          retained: (m) => plane()?.retainRemote(m),
          invalid: (reason, subject) => bus.refuse(reason, subject),
        },
      ).catch(async (err: unknown) => {
        await bus.close();
        throw err;
      });
    }
    metrics.cluster.counts = bus.counts;
    metrics.cluster.interest = () => bus.interest;
    if (join.state !== undefined) metrics.cluster.jetstream = join.state.counts;
    metrics.clusterLink.set(1);
    log.info(
      {
        node,
        nats: config.cluster.nats,
        identity: identity === undefined ? null : `${identity.role}:${identity.name}`,
        sessions: join.state === undefined ? 'node' : `jetstream (replicas ${config.cluster.replicas})`,
        ...(join.state !== undefined && { persistentSessions: join.state.sessionCount }),
      },
      'joined the cluster: messages between nodes over NATS',
    );
    return join;
  }

  /**
   * The retained messages the other nodes hold (set before this node started, or while it was
   * away); then this node serves them in turn. A whole snapshot from another node is the
   * cluster's set: what this node kept on disk from before and is not in it was cleared (or its
   * device revoked) while this node was away. Alone, or with a snapshot cut short, it keeps its own.
   */
  async syncRetained(mqtt: MqttPlane): Promise<void> {
    if (this.state !== undefined) {
      const count = await this.state.watchRetained();
      this.#log.info({ retained: count }, 'retained messages read from JetStream');
      return;
    }
    const changed = this.#changedWhileSyncing ?? new Set<string>();
    const inSnapshot = new Set<string>();
    const synced = await this.bus.fetchRetained();
    for (const m of synced.messages) {
      inSnapshot.add(m.topic);
      if (!changed.has(m.topic)) mqtt.retainRemote(m);
    }
    const forgotten =
      synced.node !== undefined && synced.complete
        ? mqtt.keepRetainedOnly((topic) => inSnapshot.has(topic) || changed.has(topic))
        : 0;
    this.#changedWhileSyncing = undefined;
    const count = synced.messages.length;
    if (count > 0 || forgotten > 0 || !synced.complete) {
      const line = { from: synced.node, retained: count, forgotten, complete: synced.complete };
      if (synced.refused !== undefined)
        this.#log.warn(
          { ...line, code: 'CLUSTER_MESSAGE_INVALID', reason: synced.refused },
          'retained snapshot from another node refused: this node keeps its own set; the rest arrives as it changes',
        );
      else if (synced.complete) this.#log.info(line, 'retained messages taken from another node');
      else
        this.#log.warn(
          line,
          'retained snapshot from another node incomplete (timed out or changed while sent): kept what arrived, dropped nothing; the rest arrives as it changes',
        );
    }
    await this.bus.serveRetained(() => mqtt.retainedMessages());
  }
}
