import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { DEVICE_TYPES, type DeviceType } from '../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { NODE_NAME } from '../firmware-sdk/protocol/node-id.ts';
import { parseDuration } from './duration.ts';

/**
 * Configuration, resolved once at the entry point: defaults → file → environment → flags,
 * validated all at once (every problem reported together), then frozen. Slices are passed
 * down explicitly; nothing below reads the environment.
 *
 * The file is JSON: `--config FILE`, `FLEETGATE_CONFIG`, or `fleetgate.json` in the data dir.
 * Durations are strings with a unit (`30d`, `24h`, `90s`).
 */
export interface FleetgateConfig {
  dataDir: string;
  /**
   * Where the fleet registry lives: a SQLite file (the embedded default, `<dataDir>/registry.db`;
   * `sqlite:PATH` or a path) or a PostgreSQL database (`postgres://user@host:5432/db`) shared by
   * several gateway nodes and provisioning instances (docs/scale-out.md). `registry` in the
   * file, `FLEETGATE_REGISTRY`, `--registry`.
   */
  registry: string;
  /** Who the audit log says acted (CLI: `cli:<user>`). */
  actor: string;
  ca: {
    /** Extra names (DNS or IP) for the gateway's server certificate. */
    hostnames: readonly string[];
    rootValidityMs: number;
    intermediateValidityMs: number;
    serverValidityMs: number;
    /** Lifetime of device certificates. */
    leafValidityMs: number;
    /** How long a published CRL stays current (nextUpdate). */
    crlValidityMs: number;
  };
  enrollment: {
    /** Lifetime of one-time enrollment tokens. */
    tokenTtlMs: number;
  };
  gateway: GatewayConfig;
  provisioning: ProvisioningConfig;
  https: HttpsConfig;
  log: {
    /** pino level of the services' log: fatal, error, warn, info, debug, trace, silent. */
    level: string;
    /** `auto`: readable lines on a terminal, JSON lines otherwise; `json` or `pretty` always. */
    format: LogFormat;
  };
  mqtt: MqttConfig;
  /** Several gateway nodes: messages between them over NATS (off when `nats` is empty). */
  cluster: {
    /** NATS server URLs, comma-separated (`nats://10.0.0.5:4222,nats://10.0.0.6:4222`); empty: one node, no NATS. */
    nats: string;
    /** This node's name (logs, metrics, its own `mqtt-<node>.db`); default: the host name. */
    node: string;
    /**
     * Run with a NATS or PostgreSQL link that leaves loopback unauthenticated (no TLS with a node
     * certificate). Off: such a node refuses to start (CLUSTER_INSECURE). For a lab only.
     */
    allowInsecure: boolean;
    /** This node's certificate and key for NATS (`fleetgate node issue`); empty: the data directory's `node/node.crt` and `node/node.key`. */
    nodeCert: string;
    nodeKey: string;
    /**
     * Where persistent MQTT sessions, their queued QoS 1/2 messages and retained messages live in
     * a cluster: `jetstream` — in NATS JetStream (replicated; a session follows its device to any
     * node, nothing acknowledged is lost when a node dies; the default); `node` — on each node's own
     * disk (`mqtt-<node>.db`; a session stays with its node). Alone (no NATS) always the node's disk.
     */
    sessions: 'jetstream' | 'node';
    /** JetStream replicas of the cluster's streams (3 on a 3-server NATS cluster; 1 on a single server). */
    replicas: number;
    /**
     * With `jetstream` sessions: how long a gateway node may go unheard (nodes write a beat every
     * 2 s) before the sessions it held count as orphaned — offline since it was last heard, expiring
     * like any offline session. At least 6 s.
     */
    nodeTimeoutMs: number;
    /**
     * `announced`: each node announces the subjects it listens on, and a node publishes to NATS
     * only the messages another node may want (the default); `all`: every message accepted goes
     * to NATS — for a cluster that still has nodes of a release before announcements (they
     * announce nothing, so the others would not know what they want).
     */
    interest: 'announced' | 'all';
  };
}

/** The MQTT core: durability and the bounds on what one client may make the gateway hold. */
export interface MqttConfig {
  /**
   * `disk`: a PUBACK/PUBREC means the message is committed to `data/mqtt.db` for every persistent
   * session that must receive it (group commit per event-loop turn). `memory`: acknowledged at
   * once, lost if the gateway dies — faster, off by default.
   */
  durability: 'disk' | 'memory';
  /** QoS 1/2 messages in flight (sent, not yet acknowledged) to one client. */
  maxInflight: number;
  /** QoS 1/2 messages queued for one session beyond the in-flight window; past it the oldest are dropped (counted). */
  maxQueuedMessages: number;
  /** Bytes waiting in one connection's socket; past it QoS 0 to that client is dropped (counted). */
  maxOutboundBytes: number;
  /** A connection over `maxOutboundBytes` for this long is disconnected (a subscriber that does not read). */
  drainTimeoutMs: number;
  /** Retained messages one device may hold, and their bytes; and all devices together. */
  retainedPerDevice: number;
  retainedBytesPerDevice: number;
  retainedTotal: number;
  retainedBytesTotal: number;
  /** A persistent session nobody has connected to for this long is deleted (MQTT 5: the most a client may ask for). */
  sessionExpiryMs: number;
  /** MQTT 5 Receive Maximum announced to clients: QoS 1/2 PUBLISHes a client may have unacknowledged. */
  receiveMaximum: number;
  /** MQTT 5 Topic Alias Maximum announced to clients. */
  topicAliasMaximum: number;
  /** MQTT 5 user properties on one PUBLISH or will, in bytes (names + values); past it the message is refused (PUBACK 0x97). */
  maxUserPropertyBytes: number;
}

/** One HTTPS route: requests under `prefix` go to `origin` with an assertion for `audience`. */
export interface RouteConfig {
  prefix: string;
  origin: string;
  audience: string;
  /** Only these device types / fleets may call it (absent: any). */
  allow?: { types?: readonly string[]; fleets?: readonly string[] };
  /** Origin answer deadline; the assertion's `exp` is no later than iat + this. */
  timeoutMs: number;
  /** Largest request body, bytes (streamed, never buffered). */
  bodyLimit: number;
  /** Remove the prefix from the path sent to the origin. */
  stripPrefix: boolean;
}

export interface HttpsConfig {
  host: string;
  port: number;
  /** Answer every request with `Connection: close`: each request is a new full handshake. */
  perRequestHandshake: boolean;
  /** Request header that carries the assertion to the origin. */
  assertionHeader: string;
  issuer: string;
  /** How long a rotated-out signing key stays in the JWKS. */
  jwtOverlapMs: number;
  /** Idle time between requests on a keep-alive connection before it is closed. */
  keepAliveTimeoutMs: number;
  /** Time allowed for a request's headers to arrive. */
  headersTimeoutMs: number;
  /**
   * A connection with no traffic in either direction for this long is closed (a connection
   * that never sends a request, too). At least the longest route timeout plus 5 s.
   */
  idleTimeoutMs: number;
  /** A request body that sends nothing for this long is cut (408). */
  bodyIdleTimeoutMs: number;
  /** After `bodyIdleTimeoutMs`, a request body slower than this on average is cut (408). */
  minBodyBytesPerSecond: number;
  maxHeaderBytes: number;
  /** Open connections on the HTTPS plane, all devices together. */
  maxConnections: number;
  /** Open connections of one device (its certificate's device id); past it requests get 429. */
  maxConnectionsPerDevice: number;
  routes: readonly RouteConfig[];
}

export interface ProvisioningConfig {
  host: string;
  /** Provisioning HTTPS API and EST. 0 picks an ephemeral port (tests). */
  port: number;
  /** Enrollment requests (JSON, EST) per client IP per second before 429. */
  enrollRatePerSecond: number;
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** TLS handshake deadline, and the cap on sockets still handshaking (all, and per address). */
  handshakeTimeoutMs: number;
  maxPendingHandshakes: number;
  maxPendingHandshakesPerAddress: number;
  /** Largest request body on enrollment routes (a CSR is a few KiB). */
  bodyLimitBytes: number;
}

/** Per device type: what one connection may do. */
export interface TypeLimits {
  /** Largest MQTT packet accepted (fixed header's remaining length), bytes. */
  maxPacketBytes: number;
  /** Keepalive the client asks for in CONNECT must be within [min, max] seconds. */
  keepaliveMinS: number;
  keepaliveMaxS: number;
  /** Unsent bytes to one connection of this type before its QoS 0 is dropped; absent: `mqtt.maxOutboundBytes`. */
  maxOutboundBytes?: number;
  /** QoS 1/2 messages queued for one session of this type; absent: `mqtt.maxQueuedMessages`. */
  maxQueuedMessages?: number;
  /** Subscriptions (distinct filters) one MQTT session may hold; past it, SUBACK 0x80 / MQTT 5 0x97 Quota exceeded. */
  maxSubscriptions: number;
  /** Per device (all its connections on a node): inbound PUBLISH packets a second (burst: 10 s worth). */
  messagesPerSecond: number;
  /** Inbound PUBLISH bytes a second (burst: 10 s worth, at least one largest packet). */
  bytesPerSecond: number;
  /** HTTPS requests a second (burst: 10 s worth); past it 429 with Retry-After, no assertion minted. */
  requestsPerSecond: number;
  /** New MQTT sessions and HTTPS connections a minute (burst: a minute's worth): reconnect loops. */
  connectsPerMinute: number;
}

export interface TopicRules {
  publish: readonly string[];
  subscribe: readonly string[];
}

export interface GatewayConfig {
  host: string;
  /** MQTT over TLS. 0 picks an ephemeral port (tests). */
  mqttPort: number;
  /** MQTT over secure WebSocket. */
  wssPort: number;
  wssPath: string;
  /** Admin listener: /healthz, /metrics, live sessions (operator certificate). */
  adminHost: string;
  adminPort: number;
  /** Operator console (web pages; a client certificate of type operator or auditor is required by TLS and checked per request). */
  consoleEnabled: boolean;
  consoleHost: string;
  consolePort: number;
  /** TLS handshake deadline on every gateway listener; also bounds a WSS upgrade request. */
  handshakeTimeoutMs: number;
  /**
   * TCP load balancers (addresses or CIDRs) whose connections to the device listeners (MQTT, WSS, HTTPS)
   * begin with a PROXY protocol header (v1 or v2) naming the device's address; from them the header
   * is required, from anyone else refused. Empty (the default): no PROXY protocol.
   */
  proxyProtocolFrom: string[];
  /** Sockets still in their TLS handshake, over all gateway listeners (unauthenticated). */
  maxPendingHandshakes: number;
  /** The same, from one source address (mind NAT: a factory behind one address). */
  maxPendingHandshakesPerAddress: number;
  /** Time allowed between the TLS handshake and the MQTT CONNECT. */
  connectTimeoutMs: number;
  /** MQTT connections past their TLS handshake but not yet admitted by CONNECT, over both MQTT listeners. */
  maxPendingConnects: number;
  /** The same, from one source address. */
  maxPendingConnectsPerAddress: number;
  /** Per-device quotas (`limits.<type>.messagesPerSecond`, … ): on by default; off for benchmarks of raw capacity. */
  quotas: boolean;
  /**
   * A device over its message or byte rate: `disconnect` (MQTT 5: DISCONNECT 0x96 Message rate too
   * high; 3.1.1: closed) or `drop` (QoS 0 dropped; QoS 1/2: MQTT 5 PUBACK/PUBREC 0x97, 3.1.1 no
   * acknowledgement). Counted either way.
   */
  quotaAction: 'disconnect' | 'drop';
  /** Admin listener request deadline (probes, operators). */
  adminRequestTimeoutMs: number;
  /** How often the gateway reads the registry's status-event feed while the registry is being written (live revocation). */
  statusPollMs: number;
  /** How often it reads the feed while the registry file is quiet (inotify announces writes; this is the safety net). */
  statusIdlePollMs: number;
  /** How long a connection waits for the registry to answer its status check before it is refused REGISTRY_UNAVAILABLE. */
  registryTimeoutMs: number;
  /** Admitted certificates whose status the gateway keeps in memory (kept current by the status feed). */
  statusCacheSize: number;
  limits: Readonly<Record<DeviceTypeName, TypeLimits>>;
  /**
   * Topic templates per device type; `${device.id}`, `${device.fleet}`, `${device.type}` are
   * replaced from the certificate's device. A `gateway` device also gets `devices/<child>/#`
   * for each registered child.
   */
  topics: Readonly<Record<DeviceTypeName, TopicRules>>;
}

/** The device types (one list, in the wire contract). */
type DeviceTypeName = DeviceType;

const DAY = 86_400_000;
const MIB = 1024 * 1024;

/** How the services' log is written (`log.format`). */
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export function isLogFormat(value: unknown): value is LogFormat {
  return (LOG_FORMATS as readonly unknown[]).includes(value);
}

export const DEFAULTS: FleetgateConfig = Object.freeze({
  dataDir: './data',
  registry: '',
  actor: 'cli',
  ca: {
    hostnames: [],
    rootValidityMs: 3650 * DAY, // 10 years
    intermediateValidityMs: 1825 * DAY, // 5 years
    serverValidityMs: 365 * DAY, // 1 year
    leafValidityMs: 30 * DAY, // 30 days
    crlValidityMs: 7 * DAY, // 7 days
  },
  enrollment: {
    tokenTtlMs: DAY, // 24 hours
  },
  gateway: {
    host: '127.0.0.1',
    mqttPort: 8883,
    wssPort: 8884,
    wssPath: '/mqtt',
    adminHost: '127.0.0.1',
    adminPort: 9444,
    consoleEnabled: true,
    consoleHost: '127.0.0.1',
    consolePort: 9445,
    handshakeTimeoutMs: 10_000, // 10 s
    proxyProtocolFrom: [] as string[],
    maxPendingHandshakes: 2_000,
    maxPendingHandshakesPerAddress: 200,
    connectTimeoutMs: 10_000, // 10 s
    maxPendingConnects: 2_000,
    maxPendingConnectsPerAddress: 200,
    quotas: true,
    quotaAction: 'disconnect' as const,
    adminRequestTimeoutMs: 10_000, // 10 s
    statusPollMs: 20, // 20 ms: bounds revoke → live cut
    statusIdlePollMs: 250, // a quiet registry is read 4 times a second (writes are announced by the kernel)
    registryTimeoutMs: 500, // a new connection that cannot be checked is refused within this
    statusCacheSize: 100_000,
    limits: {
      // Subscriptions: a device needs a handful (its commands, its config); a gateway one per child.
      sensor: {
        maxPacketBytes: 64 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxSubscriptions: 100,
        messagesPerSecond: 500,
        bytesPerSecond: 4 * MIB,
        requestsPerSecond: 50,
        connectsPerMinute: 300,
      },
      gateway: {
        maxPacketBytes: 256 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxSubscriptions: 2_000,
        messagesPerSecond: 10_000,
        bytesPerSecond: 32 * MIB,
        requestsPerSecond: 500,
        connectsPerMinute: 300,
      },
      camera: {
        maxPacketBytes: 8 * 1024 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxSubscriptions: 100,
        messagesPerSecond: 500,
        bytesPerSecond: 16 * MIB,
        requestsPerSecond: 50,
        connectsPerMinute: 300,
      },
      // A backend service subscribes to the fleet: it absorbs bursts from many devices at once.
      service: {
        maxPacketBytes: 8 * 1024 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxOutboundBytes: 16 * 1024 * 1024,
        maxQueuedMessages: 100_000,
        maxSubscriptions: 100_000,
        messagesPerSecond: 100_000,
        bytesPerSecond: 256 * MIB,
        requestsPerSecond: 5_000,
        connectsPerMinute: 600,
      },
      operator: {
        maxPacketBytes: 64 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxSubscriptions: 100,
        messagesPerSecond: 100,
        bytesPerSecond: MIB,
        requestsPerSecond: 50,
        connectsPerMinute: 300,
      },
      auditor: {
        maxPacketBytes: 64 * 1024,
        keepaliveMinS: 5,
        keepaliveMaxS: 1200,
        maxSubscriptions: 100,
        messagesPerSecond: 100,
        bytesPerSecond: MIB,
        requestsPerSecond: 50,
        connectsPerMinute: 300,
      },
    },
    topics: {
      sensor: { publish: ['devices/${device.id}/#'], subscribe: ['devices/${device.id}/#'] },
      gateway: { publish: ['devices/${device.id}/#'], subscribe: ['devices/${device.id}/#'] },
      camera: { publish: ['devices/${device.id}/#'], subscribe: ['devices/${device.id}/#'] },
      service: { publish: ['devices/+/commands/#'], subscribe: ['devices/+/#'] },
      operator: { publish: [], subscribe: [] },
      auditor: { publish: [], subscribe: [] },
    },
  },
  https: {
    host: '127.0.0.1',
    port: 8443,
    perRequestHandshake: false,
    assertionHeader: 'Fleetgate-Assertion',
    issuer: 'fleetgate',
    jwtOverlapMs: DAY, // 24 h
    keepAliveTimeoutMs: 5_000, // 5 s
    headersTimeoutMs: 10_000, // 10 s
    idleTimeoutMs: 60_000, // 60 s
    bodyIdleTimeoutMs: 10_000, // 10 s
    minBodyBytesPerSecond: 1024, // 1 KiB/s
    maxHeaderBytes: 16 * 1024, // 16 KiB
    maxConnections: 20_000,
    maxConnectionsPerDevice: 16,
    routes: [],
  },
  log: {
    level: 'info',
    format: 'auto' as const,
  },
  cluster: {
    nats: '',
    node:
      hostname()
        .replace(/[^A-Za-z0-9._-]/g, '-')
        .replace(/^[^A-Za-z0-9]+/, '')
        .slice(0, 63) || 'node',
    allowInsecure: false,
    nodeCert: '',
    nodeKey: '',
    sessions: 'jetstream' as 'jetstream' | 'node',
    replicas: 3,
    nodeTimeoutMs: 30_000,
    interest: 'announced' as 'announced' | 'all',
  },
  mqtt: {
    durability: 'disk' as const,
    maxInflight: 32,
    maxQueuedMessages: 1_000,
    maxOutboundBytes: 1024 * 1024, // 1 MiB
    drainTimeoutMs: 10_000, // 10 s
    retainedPerDevice: 100,
    retainedBytesPerDevice: 1024 * 1024, // 1 MiB
    retainedTotal: 100_000,
    retainedBytesTotal: 256 * 1024 * 1024, // 256 MiB
    sessionExpiryMs: 7 * DAY, // 7 days
    receiveMaximum: 256,
    topicAliasMaximum: 32,
    maxUserPropertyBytes: 4_096,
  },
  provisioning: {
    host: '127.0.0.1',
    port: 9443,
    enrollRatePerSecond: 200,
    requestTimeoutMs: 30_000, // 30 s
    headersTimeoutMs: 10_000, // 10 s
    keepAliveTimeoutMs: 5_000, // 5 s
    handshakeTimeoutMs: 10_000, // 10 s
    maxPendingHandshakes: 1_000,
    maxPendingHandshakesPerAddress: 100,
    bodyLimitBytes: 20 * 1024, // 20 KiB: a CSR of at most 16 KiB plus its JSON envelope
  },
});

/** Where each setting may come from: its path in the file, its environment variable, its parser. */
const SETTINGS = [
  { key: 'ca.hostnames', file: ['ca', 'hostnames'], env: 'FLEETGATE_HOSTNAMES', kind: 'list' },
  {
    key: 'gateway.proxyProtocolFrom',
    file: ['gateway', 'proxyProtocolFrom'],
    env: 'FLEETGATE_PROXY_PROTOCOL_FROM',
    kind: 'cidrs',
  },
  { key: 'ca.rootValidityMs', file: ['ca', 'rootValidity'], env: 'FLEETGATE_ROOT_VALIDITY', kind: 'duration' },
  {
    key: 'ca.intermediateValidityMs',
    file: ['ca', 'intermediateValidity'],
    env: 'FLEETGATE_INTERMEDIATE_VALIDITY',
    kind: 'duration',
  },
  { key: 'ca.serverValidityMs', file: ['ca', 'serverValidity'], env: 'FLEETGATE_SERVER_VALIDITY', kind: 'duration' },
  { key: 'ca.leafValidityMs', file: ['ca', 'leafValidity'], env: 'FLEETGATE_LEAF_VALIDITY', kind: 'duration' },
  { key: 'ca.crlValidityMs', file: ['ca', 'crlValidity'], env: 'FLEETGATE_CRL_VALIDITY', kind: 'duration' },
  { key: 'enrollment.tokenTtlMs', file: ['enrollment', 'tokenTtl'], env: 'FLEETGATE_TOKEN_TTL', kind: 'duration' },
  { key: 'gateway.host', file: ['gateway', 'host'], env: 'FLEETGATE_GATEWAY_HOST', kind: 'host' },
  { key: 'gateway.mqttPort', file: ['gateway', 'mqttPort'], env: 'FLEETGATE_MQTT_PORT', kind: 'port' },
  { key: 'gateway.wssPort', file: ['gateway', 'wssPort'], env: 'FLEETGATE_WSS_PORT', kind: 'port' },
  { key: 'gateway.adminHost', file: ['gateway', 'adminHost'], env: 'FLEETGATE_ADMIN_HOST', kind: 'host' },
  { key: 'gateway.adminPort', file: ['gateway', 'adminPort'], env: 'FLEETGATE_ADMIN_PORT', kind: 'port' },
  { key: 'gateway.consoleEnabled', file: ['gateway', 'console'], env: 'FLEETGATE_CONSOLE', kind: 'boolean' },
  { key: 'gateway.consoleHost', file: ['gateway', 'consoleHost'], env: 'FLEETGATE_CONSOLE_HOST', kind: 'host' },
  { key: 'gateway.consolePort', file: ['gateway', 'consolePort'], env: 'FLEETGATE_CONSOLE_PORT', kind: 'port' },
  {
    key: 'gateway.handshakeTimeoutMs',
    file: ['gateway', 'handshakeTimeout'],
    env: 'FLEETGATE_HANDSHAKE_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'gateway.maxPendingHandshakes',
    file: ['gateway', 'maxPendingHandshakes'],
    env: 'FLEETGATE_MAX_PENDING_HANDSHAKES',
    kind: 'count',
  },
  {
    key: 'gateway.maxPendingHandshakesPerAddress',
    file: ['gateway', 'maxPendingHandshakesPerAddress'],
    env: 'FLEETGATE_MAX_PENDING_HANDSHAKES_PER_ADDRESS',
    kind: 'count',
  },
  {
    key: 'gateway.maxPendingConnects',
    file: ['gateway', 'maxPendingConnects'],
    env: 'FLEETGATE_MAX_PENDING_CONNECTS',
    kind: 'count',
  },
  {
    key: 'gateway.maxPendingConnectsPerAddress',
    file: ['gateway', 'maxPendingConnectsPerAddress'],
    env: 'FLEETGATE_MAX_PENDING_CONNECTS_PER_ADDRESS',
    kind: 'count',
  },
  { key: 'gateway.quotas', file: ['gateway', 'quotas'], env: 'FLEETGATE_QUOTAS', kind: 'boolean' },
  { key: 'gateway.quotaAction', file: ['gateway', 'quotaAction'], env: 'FLEETGATE_QUOTA_ACTION', kind: 'quotaaction' },
  {
    key: 'gateway.adminRequestTimeoutMs',
    file: ['gateway', 'adminRequestTimeout'],
    env: 'FLEETGATE_ADMIN_REQUEST_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'gateway.connectTimeoutMs',
    file: ['gateway', 'connectTimeout'],
    env: 'FLEETGATE_CONNECT_TIMEOUT',
    kind: 'duration',
  },
  { key: 'gateway.statusPollMs', file: ['gateway', 'statusPoll'], env: 'FLEETGATE_STATUS_POLL', kind: 'duration' },
  {
    key: 'gateway.statusIdlePollMs',
    file: ['gateway', 'statusIdlePoll'],
    env: 'FLEETGATE_STATUS_IDLE_POLL',
    kind: 'duration',
  },
  {
    key: 'gateway.registryTimeoutMs',
    file: ['gateway', 'registryTimeout'],
    env: 'FLEETGATE_REGISTRY_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'gateway.statusCacheSize',
    file: ['gateway', 'statusCacheSize'],
    env: 'FLEETGATE_STATUS_CACHE_SIZE',
    kind: 'count',
  },
  { key: 'provisioning.host', file: ['provisioning', 'host'], env: 'FLEETGATE_PROVISION_HOST', kind: 'host' },
  { key: 'provisioning.port', file: ['provisioning', 'port'], env: 'FLEETGATE_PROVISION_PORT', kind: 'port' },
  {
    key: 'provisioning.enrollRatePerSecond',
    file: ['provisioning', 'enrollRatePerSecond'],
    env: 'FLEETGATE_ENROLL_RATE',
    kind: 'count',
  },
  {
    key: 'provisioning.requestTimeoutMs',
    file: ['provisioning', 'requestTimeout'],
    env: 'FLEETGATE_PROVISION_REQUEST_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'provisioning.headersTimeoutMs',
    file: ['provisioning', 'headersTimeout'],
    env: 'FLEETGATE_PROVISION_HEADERS_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'provisioning.keepAliveTimeoutMs',
    file: ['provisioning', 'keepAliveTimeout'],
    env: 'FLEETGATE_PROVISION_KEEPALIVE_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'provisioning.handshakeTimeoutMs',
    file: ['provisioning', 'handshakeTimeout'],
    env: 'FLEETGATE_PROVISION_HANDSHAKE_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'provisioning.maxPendingHandshakes',
    file: ['provisioning', 'maxPendingHandshakes'],
    env: 'FLEETGATE_PROVISION_MAX_PENDING_HANDSHAKES',
    kind: 'count',
  },
  {
    key: 'provisioning.maxPendingHandshakesPerAddress',
    file: ['provisioning', 'maxPendingHandshakesPerAddress'],
    env: 'FLEETGATE_PROVISION_MAX_PENDING_HANDSHAKES_PER_ADDRESS',
    kind: 'count',
  },
  { key: 'https.host', file: ['https', 'host'], env: 'FLEETGATE_HTTPS_HOST', kind: 'host' },
  { key: 'https.port', file: ['https', 'port'], env: 'FLEETGATE_HTTPS_PORT', kind: 'port' },
  {
    key: 'https.perRequestHandshake',
    file: ['https', 'perRequestHandshake'],
    env: 'FLEETGATE_PER_REQUEST_HANDSHAKE',
    kind: 'boolean',
  },
  {
    key: 'https.assertionHeader',
    file: ['https', 'assertionHeader'],
    env: 'FLEETGATE_ASSERTION_HEADER',
    kind: 'header',
  },
  { key: 'https.issuer', file: ['https', 'issuer'], env: 'FLEETGATE_ISSUER', kind: 'header' },
  { key: 'https.jwtOverlapMs', file: ['https', 'jwtOverlap'], env: 'FLEETGATE_JWT_OVERLAP', kind: 'duration' },
  {
    key: 'https.keepAliveTimeoutMs',
    file: ['https', 'keepAliveTimeout'],
    env: 'FLEETGATE_HTTPS_KEEPALIVE_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'https.headersTimeoutMs',
    file: ['https', 'headersTimeout'],
    env: 'FLEETGATE_HTTPS_HEADERS_TIMEOUT',
    kind: 'duration',
  },
  { key: 'https.idleTimeoutMs', file: ['https', 'idleTimeout'], env: 'FLEETGATE_HTTPS_IDLE_TIMEOUT', kind: 'duration' },
  {
    key: 'https.bodyIdleTimeoutMs',
    file: ['https', 'bodyIdleTimeout'],
    env: 'FLEETGATE_HTTPS_BODY_IDLE_TIMEOUT',
    kind: 'duration',
  },
  {
    key: 'https.minBodyBytesPerSecond',
    file: ['https', 'minBodyBytesPerSecond'],
    env: 'FLEETGATE_HTTPS_MIN_BODY_RATE',
    kind: 'count',
  },
  {
    key: 'https.maxConnections',
    file: ['https', 'maxConnections'],
    env: 'FLEETGATE_HTTPS_MAX_CONNECTIONS',
    kind: 'count',
  },
  {
    key: 'https.maxConnectionsPerDevice',
    file: ['https', 'maxConnectionsPerDevice'],
    env: 'FLEETGATE_HTTPS_MAX_CONNECTIONS_PER_DEVICE',
    kind: 'count',
  },
  { key: 'mqtt.durability', file: ['mqtt', 'durability'], env: 'FLEETGATE_MQTT_DURABILITY', kind: 'durability' },
  { key: 'mqtt.maxInflight', file: ['mqtt', 'maxInflight'], env: 'FLEETGATE_MQTT_MAX_INFLIGHT', kind: 'count' },
  {
    key: 'mqtt.maxQueuedMessages',
    file: ['mqtt', 'maxQueuedMessages'],
    env: 'FLEETGATE_MQTT_MAX_QUEUED',
    kind: 'count',
  },
  {
    key: 'mqtt.maxOutboundBytes',
    file: ['mqtt', 'maxOutboundBytes'],
    env: 'FLEETGATE_MQTT_MAX_OUTBOUND_BYTES',
    kind: 'count',
  },
  { key: 'mqtt.drainTimeoutMs', file: ['mqtt', 'drainTimeout'], env: 'FLEETGATE_MQTT_DRAIN_TIMEOUT', kind: 'duration' },
  {
    key: 'mqtt.retainedPerDevice',
    file: ['mqtt', 'retainedPerDevice'],
    env: 'FLEETGATE_MQTT_RETAINED_PER_DEVICE',
    kind: 'count',
  },
  {
    key: 'mqtt.retainedBytesPerDevice',
    file: ['mqtt', 'retainedBytesPerDevice'],
    env: 'FLEETGATE_MQTT_RETAINED_BYTES_PER_DEVICE',
    kind: 'count',
  },
  { key: 'mqtt.retainedTotal', file: ['mqtt', 'retainedTotal'], env: 'FLEETGATE_MQTT_RETAINED_TOTAL', kind: 'count' },
  {
    key: 'mqtt.retainedBytesTotal',
    file: ['mqtt', 'retainedBytesTotal'],
    env: 'FLEETGATE_MQTT_RETAINED_BYTES_TOTAL',
    kind: 'count',
  },
  {
    key: 'mqtt.sessionExpiryMs',
    file: ['mqtt', 'sessionExpiry'],
    env: 'FLEETGATE_MQTT_SESSION_EXPIRY',
    kind: 'duration',
  },
  {
    key: 'mqtt.receiveMaximum',
    file: ['mqtt', 'receiveMaximum'],
    env: 'FLEETGATE_MQTT_RECEIVE_MAXIMUM',
    kind: 'count',
  },
  {
    key: 'mqtt.topicAliasMaximum',
    file: ['mqtt', 'topicAliasMaximum'],
    env: 'FLEETGATE_MQTT_TOPIC_ALIAS_MAXIMUM',
    kind: 'count',
  },
  {
    key: 'mqtt.maxUserPropertyBytes',
    file: ['mqtt', 'maxUserPropertyBytes'],
    env: 'FLEETGATE_MQTT_MAX_USER_PROPERTY_BYTES',
    kind: 'count',
  },
  { key: 'log.level', file: ['log', 'level'], env: 'FLEETGATE_LOG_LEVEL', kind: 'loglevel' },
  { key: 'log.format', file: ['log', 'format'], env: 'FLEETGATE_LOG_FORMAT', kind: 'logformat' },
  { key: 'cluster.nats', file: ['cluster', 'nats'], env: 'FLEETGATE_NATS', kind: 'natsurls' },
  { key: 'cluster.node', file: ['cluster', 'node'], env: 'FLEETGATE_NODE', kind: 'nodename' },
  {
    key: 'cluster.allowInsecure',
    file: ['cluster', 'allowInsecure'],
    env: 'FLEETGATE_CLUSTER_ALLOW_INSECURE',
    kind: 'boolean',
  },
  { key: 'cluster.nodeCert', file: ['cluster', 'nodeCert'], env: 'FLEETGATE_NODE_CERT', kind: 'file' },
  { key: 'cluster.nodeKey', file: ['cluster', 'nodeKey'], env: 'FLEETGATE_NODE_KEY', kind: 'file' },
  {
    key: 'cluster.sessions',
    file: ['cluster', 'sessions'],
    env: 'FLEETGATE_CLUSTER_SESSIONS',
    kind: 'clustersessions',
  },
  { key: 'cluster.replicas', file: ['cluster', 'replicas'], env: 'FLEETGATE_CLUSTER_REPLICAS', kind: 'replicas' },
  {
    key: 'cluster.nodeTimeoutMs',
    file: ['cluster', 'nodeTimeout'],
    env: 'FLEETGATE_CLUSTER_NODE_TIMEOUT',
    kind: 'nodetimeout',
  },
  {
    key: 'cluster.interest',
    file: ['cluster', 'interest'],
    env: 'FLEETGATE_CLUSTER_INTEREST',
    kind: 'clusterinterest',
  },
  { key: 'https.routes', file: ['https', 'routes'], env: '', kind: 'routes' },
  { key: 'gateway.limits', file: ['gateway', 'limits'], env: 'FLEETGATE_LIMITS', kind: 'limits' },
  { key: 'gateway.topics', file: ['gateway', 'topics'], env: '', kind: 'topics' },
] as const;

type Kind = (typeof SETTINGS)[number]['kind'];

export interface LoadOptions {
  /** `--data`; else FLEETGATE_DATA; else ./data. */
  dataDir?: string;
  /** `--config`; else FLEETGATE_CONFIG; else <data>/fleetgate.json if it exists. */
  configFile?: string;
  /** Flag values by setting key (e.g. `{ 'ca.leafValidityMs': '2m' }`), applied last. */
  flags?: Record<string, string | readonly string[] | undefined>;
  env?: NodeJS.ProcessEnv;
}

function parseValue(kind: Kind, value: unknown, where: string, problems: string[], current: unknown): unknown {
  if (kind === 'port') {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0 || n > 65_535) {
      problems.push(`${where} must be a port number 0–65535 (0: any free port)`);
      return undefined;
    }
    return n;
  }
  if (kind === 'boolean') {
    if (value === true || value === 'true' || value === '1') return true;
    if (value === false || value === 'false' || value === '0') return false;
    problems.push(`${where} must be true or false`);
    return undefined;
  }
  if (kind === 'header') {
    if (typeof value !== 'string' || !/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$/.test(value)) {
      problems.push(`${where} must be an HTTP token (letters, digits, - …)`);
      return undefined;
    }
    return value;
  }
  if (kind === 'routes') return parseRoutes(value, where, problems);
  if (kind === 'cidrs') return parseCidrs(value, where, problems);
  if (kind === 'file') return parseFile(value, where, problems);
  if (kind === 'natsurls') {
    const urls =
      typeof value === 'string'
        ? value
            .split(',')
            .map((u) => u.trim())
            .filter(Boolean)
        : undefined;
    if (urls === undefined || !urls.every((u) => /^(nats|tls):\/\/[A-Za-z0-9.:[\]-]+$/.test(u))) {
      problems.push(
        `${where} must be tls://host:port URLs (nats:// on loopback), comma-separated, no credentials (empty: no cluster)`,
      );
      return undefined;
    }
    return urls.join(',');
  }
  if (kind === 'nodename') {
    if (typeof value !== 'string' || !NODE_NAME.test(value)) {
      problems.push(`${where} must be 1–63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
      return undefined;
    }
    return value;
  }
  if (kind === 'quotaaction') {
    if (value !== 'disconnect' && value !== 'drop') {
      problems.push(`${where} must be "disconnect" or "drop"`);
      return undefined;
    }
    return value;
  }
  if (kind === 'clustersessions' || kind === 'clusterinterest' || kind === 'replicas' || kind === 'nodetimeout')
    return parseClusterValue(kind, value, where, problems);
  if (kind === 'durability') {
    if (value !== 'disk' && value !== 'memory') {
      problems.push(`${where} must be "disk" or "memory"`);
      return undefined;
    }
    return value;
  }
  if (kind === 'logformat') {
    if (!isLogFormat(value)) {
      problems.push(`${where} must be one of ${LOG_FORMATS.join(', ')}`);
      return undefined;
    }
    return value;
  }
  if (kind === 'loglevel') {
    if (typeof value !== 'string' || !['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(value)) {
      problems.push(`${where} must be one of fatal, error, warn, info, debug, trace, silent`);
      return undefined;
    }
    return value;
  }
  if (kind === 'count') {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) {
      problems.push(`${where} must be a positive integer`);
      return undefined;
    }
    return n;
  }
  if (kind === 'host') {
    if (typeof value !== 'string' || !/^[A-Za-z0-9.:-]+$/.test(value)) {
      problems.push(`${where} must be a host name or IP address`);
      return undefined;
    }
    return value;
  }
  if (kind === 'limits' || kind === 'topics') {
    // From the environment, the same object as in the file, as JSON (FLEETGATE_LIMITS='{"sensor":{…}}').
    let v = value;
    if (typeof value === 'string') {
      try {
        v = JSON.parse(value);
      } catch {
        problems.push(`${where} must be a JSON object keyed by device type`);
        return undefined;
      }
    }
    return mergePerType(kind, v, where, problems, current as Record<string, Record<string, unknown>>);
  }
  if (kind === 'duration') {
    try {
      return parseDuration(String(value), where);
    } catch (err) {
      problems.push((err as Error).message);
      return undefined;
    }
  }
  const list =
    typeof value === 'string'
      ? value
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : value;
  if (!Array.isArray(list) || !list.every((v) => typeof v === 'string' && /^[A-Za-z0-9.:*-]+$/.test(v))) {
    problems.push(`${where} must be a list of host names or IP addresses`);
    return undefined;
  }
  return list;
}

/** `cluster.sessions`, `cluster.interest`, `cluster.replicas` and `cluster.nodeTimeout`. */
function parseClusterValue(
  kind: 'clustersessions' | 'clusterinterest' | 'replicas' | 'nodetimeout',
  value: unknown,
  where: string,
  problems: string[],
): unknown {
  if (kind === 'clusterinterest') {
    if (value !== 'announced' && value !== 'all') {
      problems.push(
        `${where} must be "announced" (a node publishes only what another node listens to) or "all" (every message to NATS)`,
      );
      return undefined;
    }
    return value;
  }
  if (kind === 'clustersessions') {
    if (value !== 'jetstream' && value !== 'node') {
      problems.push(`${where} must be "jetstream" (sessions follow devices across nodes) or "node"`);
      return undefined;
    }
    return value;
  }
  if (kind === 'nodetimeout') {
    let ms: number | undefined;
    try {
      ms = parseDuration(String(value), where);
    } catch {}
    if (ms === undefined || ms < 6_000) {
      problems.push(`${where} must be a duration of at least 6s (nodes write their beat every 2 s)`);
      return undefined;
    }
    return ms;
  }
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1 || n > 5) {
    problems.push(`${where} must be 1–5 (JetStream's limit; 3 on a 3-server NATS cluster)`);
    return undefined;
  }
  return n;
}

/** Addresses or CIDRs (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`): a list, or a comma-separated string. */
function parseCidrs(value: unknown, where: string, problems: string[]): string[] | undefined {
  const list =
    typeof value === 'string'
      ? value
          .split(',')
          .map((v) => v.trim())
          .filter(Boolean)
      : value;
  const cidr = (v: unknown) => {
    if (typeof v !== 'string') return false;
    const [address = '', bits, extra] = v.split('/');
    const family = isIP(address);
    const max = family === 6 ? 128 : 32;
    return (
      family !== 0 && extra === undefined && (bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= max))
    );
  };
  if (!Array.isArray(list) || !list.every(cidr)) {
    problems.push(`${where} must be a list of IP addresses or CIDRs (10.0.0.0/8, fd00::/8)`);
    return undefined;
  }
  return list as string[];
}

/** A file path (resolved from the working directory); empty: the default. */
function parseFile(value: unknown, where: string, problems: string[]): string | undefined {
  if (typeof value !== 'string' || value.length > 4096 || value.includes('\0')) {
    problems.push(`${where} must be a file path`);
    return undefined;
  }
  return value === '' ? '' : resolve(value);
}

function parseRoutes(value: unknown, where: string, problems: string[]): RouteConfig[] | undefined {
  if (!Array.isArray(value)) {
    problems.push(`${where} must be a list of routes`);
    return undefined;
  }
  const routes: RouteConfig[] = [];
  value.forEach((r: Record<string, unknown>, i) => {
    const at = `${where}[${i}]`;
    const before = problems.length;
    if (typeof r?.prefix !== 'string' || !/^\/[A-Za-z0-9._~/-]*$/.test(r.prefix))
      problems.push(`${at}.prefix must be a path starting with /`);
    let origin: URL | undefined;
    try {
      origin = new URL(String(r?.origin));
      if (!['http:', 'https:'].includes(origin.protocol)) throw new Error('scheme');
    } catch {
      problems.push(`${at}.origin must be an http(s) URL`);
    }
    if (typeof r?.audience !== 'string' || r.audience === '')
      problems.push(`${at}.audience must be a non-empty string`);
    const allow = (r?.allow ?? {}) as { types?: unknown; fleets?: unknown };
    for (const k of ['types', 'fleets'] as const) {
      if (
        allow[k] !== undefined &&
        !(Array.isArray(allow[k]) && (allow[k] as unknown[]).every((x) => typeof x === 'string'))
      )
        problems.push(`${at}.allow.${k} must be a list of strings`);
    }
    let timeoutMs = 30_000;
    if (r?.timeoutMs !== undefined) {
      timeoutMs = Number(r.timeoutMs);
      if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0)
        problems.push(`${at}.timeoutMs must be a positive number of milliseconds`);
    } else if (r?.timeout !== undefined) {
      try {
        timeoutMs = parseDuration(String(r.timeout), `${at}.timeout`);
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    const bodyLimit = r?.bodyLimit === undefined ? 1024 * 1024 : Number(r.bodyLimit);
    if (!Number.isSafeInteger(bodyLimit) || bodyLimit < 0) problems.push(`${at}.bodyLimit must be a number of bytes`);
    if (problems.length === before) {
      routes.push({
        prefix: r.prefix as string,
        origin: (origin as URL).origin,
        audience: r.audience as string,
        allow: {
          ...(allow.types !== undefined && { types: allow.types as string[] }),
          ...(allow.fleets !== undefined && { fleets: allow.fleets as string[] }),
        },
        timeoutMs,
        bodyLimit,
        stripPrefix: r.stripPrefix === true,
      });
    }
  });
  return routes;
}

/** Per-type tables from the file: given types override their defaults field by field. */
function mergePerType(
  kind: 'limits' | 'topics',
  value: unknown,
  where: string,
  problems: string[],
  current: Record<string, Record<string, unknown>>,
): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    problems.push(`${where} must be an object keyed by device type`);
    return undefined;
  }
  const out = structuredClone(current);
  for (const [type, v] of Object.entries(value as Record<string, unknown>)) {
    if (!(DEVICE_TYPES as readonly string[]).includes(type) || v === null || typeof v !== 'object') {
      problems.push(`${where}.${type}: unknown device type or not an object`);
      continue;
    }
    for (const [field, fv] of Object.entries(v as Record<string, unknown>)) {
      const ok =
        kind === 'limits'
          ? (['maxPacketBytes', 'keepaliveMinS', 'keepaliveMaxS'].includes(field) &&
              Number.isInteger(fv) &&
              (fv as number) >= 0) ||
            ([
              'maxOutboundBytes',
              'maxQueuedMessages',
              'maxSubscriptions',
              'messagesPerSecond',
              'bytesPerSecond',
              'requestsPerSecond',
              'connectsPerMinute',
            ].includes(field) &&
              Number.isSafeInteger(fv) &&
              (fv as number) >= 1)
          : ['publish', 'subscribe'].includes(field) &&
            Array.isArray(fv) &&
            fv.every((t) => typeof t === 'string' && t.length > 0);
      if (!ok) problems.push(`${where}.${type}.${field} is invalid`);
      else (out[type] as Record<string, unknown>)[field] = fv;
    }
  }
  return out;
}

const ROUTE_KEYS = ['prefix', 'origin', 'audience', 'allow', 'timeoutMs', 'timeout', 'bodyLimit', 'stripPrefix'];

/** The closest known name, when it is close enough to be a typo (edit distance ≤ 2, or a prefix). */
function closest(name: string, known: readonly string[]): string | undefined {
  const distance = (a: string, b: string) => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let prev = row[0] as number;
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const here = row[j] as number;
        row[j] = Math.min(
          here + 1,
          (row[j - 1] as number) + 1,
          prev + (a[i - 1]?.toLowerCase() === b[j - 1]?.toLowerCase() ? 0 : 1),
        );
        prev = here;
      }
    }
    return row[b.length] as number;
  };
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/**
 * A key the configuration does not know is a mistake, not a no-op: `{"gateway":{"mqtPort":1883}}`
 * would otherwise leave the port at its default without a word. Each is reported, with the
 * likely intended key.
 */
function unknownKeys(fromFile: Record<string, unknown>, file: string, problems: string[]): void {
  const sections = new Map<string, string[]>();
  for (const s of SETTINGS) {
    const list = sections.get(s.file[0]) ?? [];
    list.push(s.file[1]);
    sections.set(s.file[0], list);
  }
  const report = (path: string, name: string, known: readonly string[]) => {
    const guess = closest(name, known);
    problems.push(
      `${file}: unknown setting ${path}${guess === undefined ? '' : ` (did you mean ${path.slice(0, path.length - name.length)}${guess}?)`}`,
    );
  };
  for (const [section, value] of Object.entries(fromFile)) {
    if (section === 'registry') continue; // a top-level string, read in loadConfig
    const fields = sections.get(section);
    if (fields === undefined) {
      report(section, section, [...sections.keys()]);
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      problems.push(`${file}: ${section} must be an object`);
      continue;
    }
    for (const [field, v] of Object.entries(value as Record<string, unknown>)) {
      if (!fields.includes(field)) report(`${section}.${field}`, field, fields);
      else if (section === 'https' && field === 'routes' && Array.isArray(v)) {
        v.forEach((route: unknown, i) => {
          if (route === null || typeof route !== 'object') return;
          for (const k of Object.keys(route))
            if (!ROUTE_KEYS.includes(k)) report(`https.routes[${i}].${k}`, k, ROUTE_KEYS);
        });
      }
    }
  }
}

function readFile(file: string, problems: string[]): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'));
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as Record<string, unknown>;
  } catch (err) {
    problems.push(`config file ${file}: ${(err as Error).message}`);
    return {};
  }
}

function setPath(target: Record<string, unknown>, key: string, value: unknown): void {
  const [section, field] = key.split('.') as [string, string];
  (target[section] as Record<string, unknown>)[field] = value;
}

export function loadConfig(options: LoadOptions = {}): FleetgateConfig {
  const env = options.env ?? process.env;
  const problems: string[] = [];
  const dataDir = resolve(options.dataDir ?? env.FLEETGATE_DATA ?? DEFAULTS.dataDir);
  const config = structuredClone(DEFAULTS) as FleetgateConfig & Record<string, unknown>;
  config.dataDir = dataDir;
  config.actor = env.FLEETGATE_ACTOR ?? `cli:${safeUser()}`;

  const explicitFile = options.configFile ?? env.FLEETGATE_CONFIG;
  const file = explicitFile ?? join(dataDir, 'fleetgate.json');
  if (explicitFile !== undefined && !existsSync(explicitFile))
    problems.push(`config file ${explicitFile} does not exist`);
  const fromFile = existsSync(file) ? readFile(file, problems) : {};
  unknownKeys(fromFile, file, problems);

  for (const s of SETTINGS) {
    const sources: [unknown, string][] = [
      [(fromFile[s.file[0]] as Record<string, unknown> | undefined)?.[s.file[1]], `${file}: ${s.file.join('.')}`],
      [s.env === '' ? undefined : env[s.env], s.env],
      [options.flags?.[s.key], `flag for ${s.key}`],
    ];
    for (const [raw, where] of sources) {
      if (raw === undefined) continue;
      const [section, field] = s.key.split('.') as [string, string];
      const value = parseValue(s.kind, raw, where, problems, (config[section] as Record<string, unknown>)[field]);
      if (value !== undefined) setPath(config, s.key, value);
    }
  }
  config.registry = registryLocation(
    dataDir,
    [
      [fromFile.registry, `${file}: registry`],
      [env.FLEETGATE_REGISTRY, 'FLEETGATE_REGISTRY'],
      [options.flags?.registry, 'flag --registry'],
    ],
    problems,
  );
  if (problems.length > 0) {
    throw new FleetgateError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`, {
      detail: { problems },
    });
  }
  return deepFreeze(config);
}

/**
 * The registry's location from the last source that sets it: a `postgres://` URL as it is, a
 * SQLite path (`sqlite:` optional) made absolute; none: `<dataDir>/registry.db`.
 */
function registryLocation(dataDir: string, sources: [unknown, string][], problems: string[]): string {
  let location = join(dataDir, 'registry.db');
  for (const [raw, where] of sources) {
    if (raw === undefined || raw === '') continue;
    if (typeof raw !== 'string') {
      problems.push(`${where} must be a string: a SQLite file (sqlite:PATH) or a postgres:// URL`);
      continue;
    }
    if (/^postgres(ql)?:\/\//i.test(raw)) {
      try {
        const url = new URL(raw);
        if (url.hostname === '' && !url.searchParams.has('host')) throw new Error('no host');
        location = raw;
      } catch {
        problems.push(`${where} is not a valid PostgreSQL URL (postgres://user@host:5432/database)`);
      }
      continue;
    }
    const path = raw.startsWith('sqlite:') ? raw.slice('sqlite:'.length) : raw;
    if (path === '' || /^[a-z][a-z0-9+.-]*:\/\//i.test(path)) {
      problems.push(`${where} must be a SQLite file (sqlite:PATH) or a postgres:// URL`);
      continue;
    }
    location = resolve(path);
  }
  return location;
}

/**
 * `FLEETGATE_DEBUG`: print stack traces of internal errors on the CLI. Read here, like every
 * `FLEETGATE_*` variable, but without loading the whole configuration (the error being printed
 * may be the configuration's own).
 */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.FLEETGATE_DEBUG !== undefined && env.FLEETGATE_DEBUG !== '' && env.FLEETGATE_DEBUG !== '0';
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? 'unknown');
  }
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
