import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';

/**
 * RFC 5280 §5.3.1 CRLReason codes usable for a permanent revocation. certificateHold (6) and
 * removeFromCRL (8) are left out on purpose: suspension is reversible registry state in
 * fleetgate, and a revocation is never undone.
 */
export const REVOCATION_REASONS = Object.freeze({
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const);

export type RevocationReasonName = keyof typeof REVOCATION_REASONS;

const BY_CODE = new Map<number, RevocationReasonName>(
  Object.entries(REVOCATION_REASONS).map(([name, code]) => [code, name as RevocationReasonName]),
);

/** Accepts a name in any case (`keyCompromise`, `key-compromise`, `KEY_COMPROMISE`) or a code. */
export function parseRevocationReason(input: string | number): number {
  if (typeof input === 'number' || /^\d+$/.test(String(input).trim())) {
    const code = Number(input);
    if (BY_CODE.has(code)) return code;
  } else {
    const wanted = input.replace(/[-_\s]/g, '').toLowerCase();
    for (const [name, code] of Object.entries(REVOCATION_REASONS)) {
      if (name.toLowerCase() === wanted) return code;
    }
  }
  throw new FleetgateError(
    'USAGE',
    `unknown revocation reason ${JSON.stringify(input)}: one of ${Object.keys(REVOCATION_REASONS).join(', ')}`,
  );
}

export function revocationReasonName(code: number): string {
  return BY_CODE.get(code) ?? `reason ${code}`;
}
