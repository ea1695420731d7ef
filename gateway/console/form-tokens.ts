import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Viewer } from './pages.ts';

/**
 * The tokens console forms carry: an HMAC, with a key made at start, of the operator's
 * certificate fingerprint and the action — a page on another origin cannot read one.
 */
export class FormTokens {
  readonly #key = randomBytes(32);

  token(v: Viewer, action: string): string {
    return createHmac('sha256', this.#key).update(`${v.fingerprint}|${action}`).digest('base64url');
  }

  /** The token was made for this operator and this action. */
  valid(v: Viewer, action: string, given: string | undefined): boolean {
    const expected = Buffer.from(this.token(v, action));
    const got = Buffer.from(given ?? '');
    return got.length === expected.length && timingSafeEqual(got, expected);
  }
}
