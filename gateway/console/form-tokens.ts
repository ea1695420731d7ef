import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Viewer } from './pages.ts';

/** How long a confirmation page's form may be submitted. */
export const FORM_TOKEN_TTL_MS = 10 * 60_000; // 10 min

/** Tokens issued and not yet used or expired, at most (an operator reloading pages all day stays far below). */
const MAX_OPEN = 10_000;

/**
 * The tokens console forms carry (OWASP's synchronizer token): an HMAC, with a key made at start,
 * of the operator's certificate fingerprint, the action, the target and every parameter fixed on
 * the confirmation page (the form's hidden fields), a nonce and an expiry. A page on another
 * origin cannot read one; a token is good for one submission of that exact action on that exact
 * target, within {@link FORM_TOKEN_TTL_MS}. What the operator types on the page (a reason, a
 * lifetime) is checked as input, not bound.
 */
export class FormTokens {
  readonly #key = randomBytes(32);
  /** Nonces issued and not yet used, with their expiry. */
  readonly #open = new Map<string, number>();

  /** A token for `action` on the parameters in `bound` (the confirmation page's hidden fields). */
  token(v: Viewer, action: string, bound: Readonly<Record<string, string>>, now = Date.now()): string {
    this.#prune(now);
    const nonce = randomBytes(16).toString('base64url');
    const expires = now + FORM_TOKEN_TTL_MS;
    const names = Object.keys(bound).sort();
    const claim = Buffer.from(JSON.stringify({ n: nonce, e: expires, f: names })).toString('base64url');
    this.#open.set(nonce, expires);
    if (this.#open.size > MAX_OPEN) this.#open.delete(this.#open.keys().next().value as string);
    return `${claim}.${this.#mac(v, action, claim, names, bound)}`;
  }

  /**
   * Checks and spends a token: undefined when it was made for this operator, this action and
   * these parameter values, has not expired and was not used; else why not (for the refusal).
   */
  spend(
    v: Viewer,
    action: string,
    form: Readonly<Record<string, unknown>>,
    given: string | undefined,
    now = Date.now(),
  ): string | undefined {
    const [claim = '', mac = ''] = (given ?? '').split('.');
    let parsed: { n?: unknown; e?: unknown; f?: unknown };
    try {
      parsed = JSON.parse(Buffer.from(claim, 'base64url').toString('utf8')) as typeof parsed;
    } catch {
      return "the form token is missing or not this operator's (reload the page and confirm again)";
    }
    const { n, e, f } = parsed;
    if (typeof n !== 'string' || typeof e !== 'number' || !Array.isArray(f) || !f.every((x) => typeof x === 'string'))
      return "the form token is missing or not this operator's (reload the page and confirm again)";
    const bound = Object.fromEntries(f.map((name) => [name, typeof form[name] === 'string' ? form[name] : '']));
    const expected = Buffer.from(this.#mac(v, action, claim, f, bound));
    const got = Buffer.from(mac);
    if (got.length !== expected.length || !timingSafeEqual(got, expected))
      return "the form token is not this operator's, or not for this action and target (reload the page and confirm again)";
    if (e <= now) return 'the form has expired (10 minutes): open the confirmation page again';
    if (!this.#open.delete(n))
      return 'this form was already submitted (or the console restarted): open the confirmation page again';
    return undefined;
  }

  #mac(
    v: Viewer,
    action: string,
    claim: string,
    names: readonly string[],
    bound: Readonly<Record<string, unknown>>,
  ): string {
    const fields = names.map((name) => [name, String(bound[name] ?? '')]);
    const input = JSON.stringify([v.fingerprint, action, claim, fields]); // unambiguous, whatever the values hold
    return createHmac('sha256', this.#key).update(input).digest('base64url');
  }

  #prune(now: number): void {
    for (const [nonce, expires] of this.#open) if (expires <= now) this.#open.delete(nonce);
  }
}
