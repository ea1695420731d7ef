import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { request } from 'node:https';
import { hostname } from 'node:os';
import { urlHost } from '../config/paths.ts';
import { serialHex } from '../firmware-sdk/protocol/certificate-identity.ts';
import { FleetgateError, isErrorCode } from '../firmware-sdk/protocol/errors.ts';
import { verifyServerCertificate } from '../firmware-sdk/protocol/server-certificate.ts';
import { EC_P256, ECDSA_SHA256, subtle, x509 } from '../provisioning/ca/x509.ts';
import { enroll } from '../provisioning/enroll/pipeline.ts';
import { writeNewFile } from '../runtime/files.ts';
import type { CliContext } from './context.ts';

const OPERATOR_VALIDITY_MS = 30 * 86_400_000;
const RENEW_BEFORE_MS = 86_400_000;

/** `operator-<host>`, squeezed into the device id alphabet. */
function operatorId(): string {
  return `operator-${hostname().replace(/[^A-Za-z0-9._-]/g, '-')}`.slice(0, 128);
}

/**
 * The CLI's own `operator` certificate for the admin API: made on first use (the key never
 * leaves the data dir, 0600), recorded in the registry like any device, renewed a day before
 * it expires or when the registry no longer lists it as valid.
 */
export async function operatorIdentity(ctx: CliContext): Promise<{ cert: string; key: string; ca: string }> {
  const { operatorCert, operatorKey, rootCert } = ctx.paths;
  const registry = ctx.registry();
  if (existsSync(operatorCert) && existsSync(operatorKey)) {
    const cert = new X509Certificate(readFileSync(operatorCert));
    const record = registry.getCertificate(serialHex(cert.serialNumber));
    if (record !== undefined && record.revocation === null && record.notAfter - Date.now() > RENEW_BEFORE_MS) {
      return {
        cert: readFileSync(operatorCert, 'utf8'),
        key: readFileSync(operatorKey, 'utf8'),
        ca: readFileSync(rootCert, 'utf8'),
      };
    }
  }
  const id = operatorId();
  if (registry.getDevice(id) === undefined) registry.addDevice({ id, type: 'operator', fleet: 'operators' }, ctx.actor);
  const { keyPem, issued } = await issueWithNewKey(ctx, id, OPERATOR_VALIDITY_MS);
  // Key first, then certificate; each replaced atomically.
  for (const [file, content, mode] of [
    [operatorKey, keyPem, 0o600],
    [operatorCert, issued.certificate + issued.chain, 0o644],
  ] as const) {
    const tmp = `${file}.${process.pid}.new`;
    writeNewFile(tmp, content, mode);
    renameSync(tmp, file);
  }
  return { cert: issued.certificate + issued.chain, key: keyPem, ca: issued.ca };
}

/**
 * A new P-256 key made here and a certificate for it issued to `id` (an operator or auditor
 * already in the registry), recorded like every certificate. The key is returned, never written.
 */
export async function issueWithNewKey(
  ctx: CliContext,
  id: string,
  validityMs: number,
): Promise<{ keyPem: string; issued: Awaited<ReturnType<typeof enroll>> }> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const keys = {
    privateKey: await subtle.importKey('pkcs8', privateKey.export({ type: 'pkcs8', format: 'der' }), EC_P256, false, [
      'sign',
    ]),
    publicKey: await subtle.importKey('spki', publicKey.export({ type: 'spki', format: 'der' }), EC_P256, true, [
      'verify',
    ]),
  };
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${id}`,
    keys,
    signingAlgorithm: ECDSA_SHA256,
  });
  const issued = await enroll(
    { registry: ctx.registry(), ca: await ctx.ca(), defaultValidityMs: validityMs },
    { csr: csr.toString('pem'), auth: { method: 'operator', deviceId: id }, actor: ctx.actor },
  );
  return { keyPem, issued };
}

/** One JSON request to the admin API over mTLS with the operator identity. */
export async function adminRequest(
  ctx: CliContext,
  method: 'GET' | 'DELETE',
  path: string,
  adminUrl?: string,
): Promise<unknown> {
  const identity = await operatorIdentity(ctx);
  const g = ctx.config.gateway;
  const base = new URL(adminUrl ?? `https://${urlHost(g.adminHost)}:${g.adminPort}`);
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(path, base),
      {
        method,
        cert: identity.cert,
        key: identity.key,
        ca: identity.ca,
        checkServerIdentity: verifyServerCertificate,
        timeout: 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (b: Buffer) => chunks.push(b));
        res.on('end', () => {
          let body: { error?: { code?: string; message?: string } } & Record<string, unknown>;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString()) as typeof body;
          } catch {
            return reject(new FleetgateError('INTERNAL', `admin API answered ${res.statusCode} with a non-JSON body`));
          }
          if ((res.statusCode ?? 500) >= 400) {
            const code = isErrorCode(body.error?.code) ? body.error.code : 'INTERNAL';
            return reject(
              new FleetgateError(code, `admin API (${res.statusCode}): ${body.error?.message ?? 'no message'}`),
            );
          }
          resolve(body);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        new FleetgateError(
          'ORIGIN_UNREACHABLE',
          `cannot reach the gateway's admin API at ${base.origin} (${err.code ?? err.message}); is \`fleetgate up\` running? (--admin URL)`,
        ),
      ),
    );
    req.end();
  });
}
