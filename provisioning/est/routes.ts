import * as asn1js from 'asn1js';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { httpError, retryAfterSeconds } from '../../listeners/http-errors.ts';
import { claimPeer, devicePeer } from '../api/peer.ts';
import type { ProvisioningService } from '../api/service.ts';
import { parseCsr } from '../ca/csr.ts';
import { base64Lines, certsOnly } from '../ca/pkcs7.ts';

const PREFIX = '/.well-known/est';
const PKCS7 = 'application/pkcs7-mime';

/**
 * RFC 7030 §4.2.3: errors are plain text with the HTTP status; 401 carries a Basic challenge.
 * Like every surface, the text is the code and its public message only (the pipeline logged the rest).
 */
function estError(log: ProvisioningService['log']) {
  return (err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply): void => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') log.error({ err, url: req.url }, 'internal error');
    if (e.code === 'CERT_REQUIRED' || e.code === 'TOKEN_INVALID')
      void reply.header('www-authenticate', 'Basic realm="fleetgate EST"');
    const retry = retryAfterSeconds(e); // RFC 7030 §4.2.3: a 503 may say when to come back
    if (retry !== undefined) void reply.header('retry-after', String(retry));
    void reply.status(e.httpStatus).type('text/plain; charset=utf-8').send(`${e.code}: ${e.publicMessage}\n`);
  };
}

function sendCerts(reply: FastifyReply, pem: string, status = 200): FastifyReply {
  return reply
    .status(status)
    .header('content-transfer-encoding', 'base64')
    .type(`${PKCS7}; smime-type=certs-only`)
    .send(base64Lines(certsOnly(pem)));
}

function requirePkcs10(req: FastifyRequest): string {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/pkcs10')
    throw new FleetgateError(
      'UNSUPPORTED_MEDIA_TYPE',
      'EST enrollment takes a base64 PKCS#10 body, Content-Type: application/pkcs10',
    );
  return req.body as string;
}

/** HTTP Basic: username = device id, password = enrollment token (RFC 7030 §3.2.3). */
function basicAuth(req: FastifyRequest): { deviceId: string; token: string } | undefined {
  const header = req.headers.authorization;
  if (header === undefined) return undefined;
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header);
  const decoded = m ? Buffer.from(m[1] as string, 'base64').toString('utf8') : '';
  const colon = decoded.indexOf(':');
  if (colon <= 0) throw new FleetgateError('TOKEN_INVALID', 'malformed Basic credentials');
  return { deviceId: decoded.slice(0, colon), token: decoded.slice(colon + 1) };
}

/** The hardware serial a claim enrollment over EST names: the CSR subject's CN. */
function csrCommonName(body: string): unknown {
  try {
    return parseCsr(body).requested.commonName;
  } catch {
    return undefined; // the pipeline reports CSR_INVALID
  }
}

/** CSR attributes (RFC 7030 §4.5.2): sign with ecdsa-with-SHA256, an EC P-256 key preferred. */
function csrAttributes(): Buffer {
  const attrs = new asn1js.Sequence({
    value: [
      new asn1js.ObjectIdentifier({ value: '1.2.840.10045.4.3.2' }),
      new asn1js.Sequence({
        value: [
          new asn1js.ObjectIdentifier({ value: '1.2.840.10045.2.1' }),
          new asn1js.Set({ value: [new asn1js.ObjectIdentifier({ value: '1.2.840.10045.3.1.7' })] }),
        ],
      }),
    ],
  });
  return Buffer.from(attrs.toBER(false));
}

export function estRoutes(app: FastifyInstance, service: ProvisioningService, rateLimit: object): void {
  const meta = (req: FastifyRequest) => ({ surface: 'est', remoteAddress: req.ip });
  const estErrorHandler = estError(service.log);
  app.addContentTypeParser('application/pkcs10', { parseAs: 'string' }, (_req, body, done) => done(null, body));

  app.get(`${PREFIX}/cacerts`, { errorHandler: estErrorHandler }, async (_req, reply) =>
    sendCerts(reply, service.ca.chainPem),
  );

  app.get(`${PREFIX}/csrattrs`, { errorHandler: estErrorHandler }, async (_req, reply) =>
    reply.header('content-transfer-encoding', 'base64').type('application/csrattrs').send(base64Lines(csrAttributes())),
  );

  app.post(`${PREFIX}/simpleenroll`, { errorHandler: estErrorHandler, config: { rateLimit } }, async (req, reply) => {
    const body = requirePkcs10(req);
    const basic = basicAuth(req);
    if (basic !== undefined) {
      const r = await service.enroll(
        'token',
        () => ({ method: 'token', token: basic.token, deviceId: basic.deviceId }),
        body,
        meta(req),
      );
      return sendCerts(reply, r.certificate);
    }
    // No Basic credentials: a claim certificate, or CERT_REQUIRED (401 with the Basic challenge).
    // The claim certificate is checked before the CSR is read for its CN (the hardware serial).
    const r = await service.enroll(
      'claim',
      () => {
        const claimName = claimPeer(req, service.registry);
        return { method: 'claim', claimName, hardwareSerial: csrCommonName(body) };
      },
      body,
      meta(req),
    );
    return sendCerts(reply, r.certificate);
  });

  app.post(`${PREFIX}/simplereenroll`, { errorHandler: estErrorHandler, config: { rateLimit } }, async (req, reply) => {
    const body = requirePkcs10(req);
    const r = await service.enroll('renew', () => ({ method: 'renew', current: devicePeer(req) }), body, meta(req));
    return sendCerts(reply, r.certificate);
  });
}
