import { Agent, request } from 'undici';
import { FleetgateError, isErrorCode } from './protocol/errors.ts';
import { verifyServerCertificate } from './protocol/server-certificate.ts';

export interface TlsMaterial {
  /** Root CA the server must chain to (the fleet CA). */
  ca: string;
  /** Client certificate (leaf + chain) and key, for mTLS. */
  cert?: string;
  key?: string;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * An undici Agent that verifies the server against the fleet CA — its name against the URL's
 * host, and that it is a server certificate ({@link verifyServerCertificate}) — and presents the
 * device certificate.
 */
export function tlsAgent(tls: TlsMaterial): Agent {
  return new Agent({
    connect: {
      ca: tls.ca,
      ...(tls.cert !== undefined && { cert: tls.cert }),
      ...(tls.key !== undefined && { key: tls.key }),
      rejectUnauthorized: true,
      checkServerIdentity: verifyServerCertificate,
    },
    headersTimeout: 30_000,
    bodyTimeout: 60_000,
  });
}

/** One HTTPS request; network failures become ORIGIN_UNREACHABLE (transient: worth a retry). */
export async function httpsRequest(
  url: string,
  opts: {
    tls: TlsMaterial;
    method?: string;
    headers?: Record<string, string>;
    body?: string | Buffer | NodeJS.ReadableStream;
    agent?: Agent;
  },
): Promise<HttpResponse> {
  const agent = opts.agent ?? tlsAgent(opts.tls);
  try {
    const res = await request(url, {
      method: (opts.method ?? (opts.body === undefined ? 'GET' : 'POST')) as 'GET',
      headers: opts.headers ?? {},
      body: opts.body as string | undefined,
      dispatcher: agent,
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    return { status: res.statusCode, headers: res.headers, body };
  } catch (err) {
    throw new FleetgateError(
      'ORIGIN_UNREACHABLE',
      `${url}: ${(err as Error & { code?: string }).code ?? (err as Error).message}`,
      { cause: err },
    );
  } finally {
    if (opts.agent === undefined) await agent.close();
  }
}

/** The catalogue error in a `{ error: { code, message } }` body (or a plain `CODE: message` EST body). */
export function errorFromResponse(res: HttpResponse, what: string): FleetgateError {
  const text = res.body.toString('utf8');
  let code: string | undefined;
  let message = text.slice(0, 300);
  try {
    const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
    code = parsed.error?.code;
    message = parsed.error?.message ?? message;
  } catch {
    code = /^([A-Z_]+):/.exec(text)?.[1];
  }
  return new FleetgateError(isErrorCode(code) ? code : 'INTERNAL', `${what}: ${res.status} ${message}`.trim(), {
    detail: { status: res.status },
  });
}
