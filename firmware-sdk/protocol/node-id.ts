/**
 * How the fleet's own members (cluster nodes, not devices) are named in their certificates: the
 * contract between `fleetgate node issue`, NATS's `verify_and_map` users and PostgreSQL's
 * `pg_ident` map. A device id cannot contain `:`, so no device certificate carries a node's CN.
 */
export { NODE_URI_PREFIX } from './device-id.ts';

export const NODE_ROLES = ['gateway', 'provisioning', 'operator', 'server'] as const;
export type NodeRole = (typeof NODE_ROLES)[number];
export const NODE_ORGANIZATION = 'fleetgate';
/** A node's name: as `cluster.node` (FLEETGATE_NODE) allows. */
export const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function isNodeRole(value: unknown): value is NodeRole {
  return typeof value === 'string' && (NODE_ROLES as readonly string[]).includes(value);
}

/** The common name of a node certificate: `<role>:<name>`. */
export const nodeCommonName = (role: NodeRole, name: string): string => `${role}:${name}`;

/** The DN NATS's `verify_and_map` sees for a node certificate (RFC 2253 order). */
export const nodeDistinguishedName = (role: NodeRole, name: string): string =>
  `CN=${nodeCommonName(role, name)},OU=${role},O=${NODE_ORGANIZATION}`;
