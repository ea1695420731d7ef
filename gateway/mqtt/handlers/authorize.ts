import type { ErrorCode } from '../../../firmware-sdk/protocol/errors.ts';
import { mayPublish } from '../../policy/topics.ts';
import type { Session } from '../../sessions.ts';
import type { MqttConnection } from '../connection.ts';

/**
 * The per-packet check of PUBLISH and SUBSCRIBE (DESIGN.md step 6): the session's in-memory
 * status (kept current by the status watcher), then the topic scope.
 */
export function packetCheck(conn: MqttConnection, allowed: (s: Session) => boolean): ErrorCode | undefined {
  const session = conn.session;
  if (session === undefined) return 'NOT_AUTHORIZED';
  if (session.cut !== undefined) return session.cut;
  return allowed(session) ? undefined : 'TOPIC_DENIED';
}

/**
 * The topic policy for a PUBLISH, remembered per session for the few topics a device uses (the
 * scope only changes through `refreshScope`, which forgets). Status is checked on every packet
 * regardless, before this.
 */
export function publishable(session: Session, topic: string): boolean {
  let cache = session.publishable;
  if (cache === undefined) session.publishable = cache = new Map();
  let ok = cache.get(topic);
  if (ok === undefined) {
    ok = mayPublish(session.scope, topic);
    if (cache.size >= 64) cache.clear();
    cache.set(topic, ok);
  }
  return ok;
}
