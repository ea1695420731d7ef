import { nodeDistinguishedName } from '../../firmware-sdk/protocol/node-id.ts';
import { INTEREST_ASK_PREFIX, INTEREST_PREFIX, interestAsk, interestSubject } from './interest.ts';
import {
  INBOX_PREFIX,
  INBOX_STREAM,
  NODES_BUCKET,
  RETAINED_BUCKET,
  SESSIONS_BUCKET,
  SHARED_PREFIX,
  SHARED_STREAM,
} from './jetstream.ts';
import { LONG_PREFIX, MESSAGE_PREFIX, RETAINED_PREFIX } from './subjects.ts';
import {
  ADMIN_PREFIX,
  inboxPrefix,
  nodeBeatKey,
  RETAINED_OFFER,
  RETAINED_SEND_PREFIX,
  retainedSend,
  SESSION_PREFIX,
  sessionSubject,
} from './wire.ts';

/**
 * The NATS server's side of the cluster links (`fleetgate cluster nats-config`): TLS with the
 * fleet's root as the only client CA, `verify_and_map` (a client is the user its certificate's DN
 * names; no certificate, no user, no connection — there is no anonymous user), and per node exactly
 * the subjects its role uses:
 *
 * - a gateway publishes and receives messages (`fg.m.>`, `fg.l.>`), retained changes (`fg.r.>`),
 *   announces sessions and the subjects it listens on under its own name only (`fg.s.<node>`,
 *   `fg.i.<node>`), hears every node's, asks any node for its subjects and answers such questions
 *   for its own name only (`fg.ia.<node>`), asks and answers
 *   the operator questions (`fg.admin.*`) and the retained snapshot (offers; sends to any node; receives
 *   requests for its own name only), and receives replies on its own inboxes only (`_INBOX.<node>.>`);
 * - an operator tool may ask the operator questions and read the answers, nothing else;
 * - with JetStream (`cluster.sessions: jetstream`), a gateway also writes session inboxes
 *   (`fg.inbox.>`), durable shared groups' queues (`fg.share.>`) and the key-value buckets, and may
 *   use the JetStream API on these streams only — create them, read them, purge an inbox, make
 *   consumers on them, acknowledge a shared group's messages — never delete a stream nor touch any
 *   other;
 * - provisioning has no NATS user: it never uses the bus.
 *
 * A gateway publishes replies and snapshot chunks to `_INBOX.>`: only gateways may, so a snapshot
 * can come from no other role; which node it comes from is bound by the request's subject, which
 * only that node can receive.
 */
export interface NatsConfigOptions {
  listen: string;
  serverCert: string;
  serverKey: string;
  rootCert: string;
  gateways: readonly string[];
  operators: readonly string[];
  /** JetStream on this server (its store directory) — with `routes`, one of a cluster of servers. */
  jetstream?: { storeDir: string; serverName: string };
  /**
   * Routes to the other NATS servers, over mTLS with this server's certificate (which must also
   * carry clientAuth): a route must present a `server` certificate of the fleet named `routeName`.
   */
  routes?: { listen: string; peers: readonly string[]; routeName: string };
}

const quote = (s: string) => JSON.stringify(s);
const list = (items: readonly string[]) => `[${items.map(quote).join(', ')}]`;

export function gatewayPermissions(node: string): { publish: string[]; subscribe: string[] } {
  const shared = [
    `${MESSAGE_PREFIX}.>`,
    `${LONG_PREFIX}.>`,
    `${RETAINED_PREFIX}.>`,
    `${ADMIN_PREFIX}.*`,
    RETAINED_OFFER,
  ];
  return {
    publish: [
      ...shared,
      sessionSubject(node),
      interestSubject(node),
      `${INTEREST_ASK_PREFIX}.*`,
      `${RETAINED_SEND_PREFIX}.*`,
      '_INBOX.>',
      ...jetStreamPublish(node),
    ],
    subscribe: [
      ...shared,
      `${SESSION_PREFIX}.*`,
      `${INTEREST_PREFIX}.*`,
      interestAsk(node),
      retainedSend(node),
      `${inboxPrefix(node)}.>`,
    ],
  };
}

/**
 * The JetStream API a gateway uses, on fleetgate's five streams only; its beat under its own name
 * only; acknowledgements on the shared groups' queue only (the other consumers take none).
 */
function jetStreamPublish(node: string): string[] {
  const streams = [INBOX_STREAM, SHARED_STREAM, `KV_${SESSIONS_BUCKET}`, `KV_${RETAINED_BUCKET}`, `KV_${NODES_BUCKET}`];
  const api = '$JS.API';
  return [
    `${INBOX_PREFIX}.>`,
    `${SHARED_PREFIX}.>`,
    `$JS.ACK.${SHARED_STREAM}.>`,
    `$KV.${SESSIONS_BUCKET}.>`,
    `$KV.${RETAINED_BUCKET}.>`,
    `$KV.${NODES_BUCKET}.${nodeBeatKey(node)}`,
    `${api}.INFO`,
    `$JS.FC.>`,
    `${api}.STREAM.PURGE.${INBOX_STREAM}`,
    `${api}.STREAM.UPDATE.${INBOX_STREAM}`,
    `${api}.STREAM.UPDATE.${SHARED_STREAM}`,
    `${api}.STREAM.MSG.GET.KV_${SESSIONS_BUCKET}`,
    ...streams.flatMap((s) => [
      `${api}.STREAM.INFO.${s}`,
      `${api}.STREAM.CREATE.${s}`,
      `${api}.CONSUMER.CREATE.${s}`,
      `${api}.CONSUMER.CREATE.${s}.>`,
      `${api}.CONSUMER.INFO.${s}.>`,
      `${api}.CONSUMER.DELETE.${s}.>`,
      `${api}.CONSUMER.MSG.NEXT.${s}.>`,
    ]),
  ];
}

function operatorPermissions(node: string): { publish: string[]; subscribe: string[] } {
  return { publish: [`${ADMIN_PREFIX}.*`], subscribe: [`${inboxPrefix(node)}.>`] };
}

export function natsConfig(options: NatsConfigOptions): string {
  const user = (dn: string, p: { publish: string[]; subscribe: string[] }) =>
    `    { user: ${quote(dn)}, permissions: { publish: { allow: ${list(p.publish)} }, subscribe: { allow: ${list(p.subscribe)} } } }`;
  const users = [
    ...options.gateways.map((n) => user(nodeDistinguishedName('gateway', n), gatewayPermissions(n))),
    ...options.operators.map((n) => user(nodeDistinguishedName('operator', n), operatorPermissions(n))),
  ];
  return `# fleetgate cluster bus — generated by \`fleetgate cluster nats-config\`; regenerate it when nodes are added or removed
# (then \`nats-server --signal reload\`): a node that is not listed here cannot connect.
listen: ${quote(options.listen)}
${jetStreamBlock(options)}
tls {
  cert_file: ${quote(options.serverCert)}
  key_file: ${quote(options.serverKey)}
  # The fleet's root: only certificates from this fleet's CA are accepted, then mapped by their DN.
  ca_file: ${quote(options.rootCert)}
  verify_and_map: true
  timeout: 5
}

authorization {
  users = [
${users.join(',\n')}
  ]
}
`;
}

/** JetStream and the routes between servers (mTLS: only the fleet's route certificate may join). */
function jetStreamBlock(options: NatsConfigOptions): string {
  const js = options.jetstream;
  const routes = options.routes;
  let out = '';
  if (js !== undefined)
    out += `server_name: ${quote(js.serverName)}
jetstream { store_dir: ${quote(js.storeDir)} }
`;
  if (routes !== undefined)
    out += `
cluster {
  name: "fleetgate"
  listen: ${quote(routes.listen)}
  routes: ${list(routes.peers.map((p) => `nats-route://${p}`))}
  tls {
    cert_file: ${quote(options.serverCert)}
    key_file: ${quote(options.serverKey)}
    ca_file: ${quote(options.rootCert)}
    verify_and_map: true
    timeout: 5
  }
  # Every server's route certificate maps to this one name: \`fleetgate node issue ${routes.routeName} --role server\`.
  authorization { user: ${quote(nodeDistinguishedName('server', routes.routeName))} }
}
`;
  return out;
}
