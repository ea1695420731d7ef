import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { admit } from '../../listeners/admission.ts';
import type { EnrollmentResult } from '../enroll/pipeline.ts';
import { checkCertificateStatus } from '../registry/status.ts';
import { claimPeer, devicePeer } from './peer.ts';
import type { ProvisioningService } from './service.ts';

const CSR_FIELD = { type: 'string', minLength: 1, maxLength: 16_384 } as const;

/** RFC-shaped body of a successful enrollment: the device keeps certificate + chain, trusts ca. */
function issued(r: EnrollmentResult) {
  return {
    deviceId: r.deviceId,
    serial: r.serial,
    notBefore: new Date(r.notBefore).toISOString(),
    notAfter: new Date(r.notAfter).toISOString(),
    certificate: r.certificate,
    chain: r.chain,
    ca: r.ca,
  };
}

const meta = (req: FastifyRequest) => ({ surface: 'api', remoteAddress: req.ip });

/** The JSON API: enroll by token, by claim certificate, renew over mTLS; CA, CRL, health. */
export function jsonRoutes(app: FastifyInstance, service: ProvisioningService, rateLimit: object): void {
  app.post<{ Body: { token: string; csr: string } }>(
    '/v1/enroll',
    {
      config: { rateLimit },
      schema: {
        body: {
          type: 'object',
          required: ['token', 'csr'],
          additionalProperties: false,
          properties: { token: { type: 'string', minLength: 1, maxLength: 256 }, csr: CSR_FIELD },
        },
      },
    },
    async (req, reply) => {
      const result = await service.enroll(
        'token',
        () => ({ method: 'token', token: req.body.token }),
        req.body.csr,
        meta(req),
      );
      return reply.status(201).send(issued(result));
    },
  );

  app.post<{ Body: { hardwareSerial: string; csr: string; type?: string; fleet?: string } }>(
    '/v1/enroll/claim',
    {
      config: { rateLimit },
      schema: {
        body: {
          type: 'object',
          required: ['hardwareSerial', 'csr'],
          additionalProperties: false,
          properties: {
            hardwareSerial: { type: 'string', minLength: 1, maxLength: 100 },
            csr: CSR_FIELD,
            type: { type: 'string', maxLength: 16 },
            fleet: { type: 'string', maxLength: 128 },
          },
        },
      },
    },
    async (req, reply) => {
      const result = await service.enroll(
        'claim',
        () => ({
          method: 'claim',
          claimName: claimPeer(req, service.registry),
          hardwareSerial: req.body.hardwareSerial,
          type: req.body.type,
          fleet: req.body.fleet,
        }),
        req.body.csr,
        meta(req),
      );
      return reply.status(201).send(issued(result));
    },
  );

  app.post<{ Body: { csr: string } }>(
    '/v1/renew',
    {
      config: { rateLimit },
      schema: {
        body: { type: 'object', required: ['csr'], additionalProperties: false, properties: { csr: CSR_FIELD } },
      },
    },
    async (req, reply) => {
      const result = await service.enroll(
        'renew',
        () => ({ method: 'renew', current: devicePeer(req) }),
        req.body.csr,
        meta(req),
      );
      return reply.status(201).send(issued(result));
    },
  );

  app.get('/v1/ca', async (_req, reply) => reply.type('application/pem-certificate-chain').send(service.ca.chainPem));
  app.get('/v1/crl', async (_req, reply) => reply.type('application/pkix-crl').send(await service.crl()));
  // Prometheus, for operator (or auditor) certificates: enrollments by method and code, group commits.
  app.get('/metrics', async (req, reply) => {
    admit(
      req.raw.socket as TLSSocket,
      { status: (identity, now) => checkCertificateStatus(service.registry, identity, now) },
      { types: ['operator', 'auditor'] },
    );
    return reply.type(service.metrics.registry.contentType).send(await service.metrics.registry.metrics());
  });
  app.get('/healthz', async () => {
    service.registry.lastStatusSeq(); // throws if the registry cannot be read
    return { status: 'ok' };
  });
}
