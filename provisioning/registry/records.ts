import type { DeviceType } from '../../firmware-sdk/protocol/device-id.ts';

export const DEVICE_STATUSES = Object.freeze(['pending', 'active', 'suspended', 'revoked'] as const);
export type DeviceStatus = (typeof DEVICE_STATUSES)[number];

export interface DeviceRecord {
  id: string;
  fleet: string;
  type: DeviceType;
  parent: string | null;
  status: DeviceStatus;
  createdAt: number;
  updatedAt: number;
  metadata: Record<string, unknown>;
}

export interface CertificateRecord {
  serial: string;
  deviceId: string;
  fingerprint: string;
  spkiSha256: string;
  notBefore: number;
  notAfter: number;
  pem: string;
  issuedAt: number;
  method: string;
  actor: string;
  supersededBy: string | null;
  /** Present when the certificate is revoked. */
  revocation: RevocationRecord | null;
}

export interface RevocationRecord {
  serial: string;
  reason: number;
  revokedAt: number;
  actor: string;
}

export const DENY_KINDS = Object.freeze(['fingerprint', 'spki', 'device'] as const);
export type DenyKind = (typeof DENY_KINDS)[number];

export interface DenyRecord {
  kind: DenyKind;
  value: string;
  reason: string | null;
  createdAt: number;
  expiresAt: number | null;
  actor: string;
}

export interface AuditRecord {
  seq: number;
  at: number;
  actor: string;
  action: string;
  subject: string | null;
  detail: Record<string, unknown>;
}

export interface TokenRecord {
  hash: string;
  deviceId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
  usedSerial: string | null;
}

export interface StatusEvent {
  seq: number;
  at: number;
  kind: string;
  deviceId: string | null;
  serial: string | null;
  value: string | null;
}

export interface ClaimRecord {
  name: string;
  serial: string;
  fingerprint: string;
  notAfter: number;
  pem: string;
  createdAt: number;
  revokedAt: number | null;
  actor: string;
  /** The fleet every device it enrolls joins (bound to the claim, not chosen by the request). */
  fleet: string;
  /** The device types it may enroll; the first is the default. */
  types: string[];
  /** Hardware serials on its allowlist, and how many of them have enrolled. */
  allowed: number;
  enrolled: number;
}

export interface ClaimSerialRecord {
  hardwareSerial: string;
  claim: string;
  addedAt: number;
  enrolledAt: number | null;
  deviceId: string | null;
}
