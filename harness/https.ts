import { request } from 'node:https';
import type { Credential } from './pki.ts';

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json<T = Record<string, unknown>>(): T;
}

/** One HTTPS request on a fresh connection (no keep-alive), optionally with a client certificate. */
export function https(
  url: string,
  opts: {
    ca: string | Buffer;
    method?: string;
    body?: string | Buffer;
    headers?: Record<string, string>;
    cred?: Credential;
  },
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: opts.method ?? (opts.body === undefined ? 'GET' : 'POST'),
        ca: opts.ca,
        agent: false,
        servername: 'localhost',
        timeout: 20_000,
        headers: { ...(opts.body !== undefined && { 'content-type': 'application/json' }), ...opts.headers },
        ...(opts.cred && { cert: opts.cred.certPem, key: opts.cred.keyPem }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (b: Buffer) => chunks.push(b));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString();
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: <T>() => JSON.parse(body) as T });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** The catalogue code in a `{ "error": { "code" } }` answer (undefined when there is none). */
export function errorCodeOf(r: { json<T>(): T }): string | undefined {
  return r.json<{ error?: { code?: string } }>().error?.code;
}
