import { createReadStream, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type EnrollmentAuth, type EnrollmentResult, enroll } from '../../provisioning/enroll/pipeline.ts';
import { normalizeSerial } from '../../provisioning/registry/hex.ts';
import { parseRevocationReason, revocationReasonName } from '../../provisioning/registry/reasons.ts';
import type { CertificateRecord } from '../../provisioning/registry/records.ts';
import { writeNewFile } from '../../runtime/files.ts';
import { type CliContext, type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso, note, table } from '../output.ts';
import { parseDurationOption, parsePositiveInt, readInput } from '../parse.ts';

const DAY = 86_400_000;

function certStatus(c: CertificateRecord): string {
  if (c.revocation !== null) return `revoked (${revocationReasonName(c.revocation.reason)})`;
  if (c.notAfter < Date.now()) return 'expired';
  return c.supersededBy === null ? 'valid' : `valid, superseded by ${c.supersededBy}`;
}

interface IssueOptions extends CommonOptions {
  csr: string;
  token?: string;
  out?: string;
  days?: number;
  validity?: number;
}

async function issueOne(
  ctx: CliContext,
  auth: EnrollmentAuth,
  csr: Buffer,
  validityMs: number | undefined,
): Promise<EnrollmentResult> {
  return enroll(
    { registry: ctx.registry(), ca: await ctx.ca(), defaultValidityMs: ctx.config.ca.leafValidityMs },
    { csr, auth, actor: ctx.actor, ...(validityMs !== undefined && { validityMs }) },
  );
}

export function registerCert(program: Command, common: CommonFlags): void {
  const cert = program.command('cert').description('device certificates');
  certIssueCommand(cert, common);
  certBatchCommand(cert, common);
  certListCommand(cert, common);
  certShowCommand(cert, common);
  certRevokeCommand(cert, common);
}

/** `fleetgate cert issue`. */
function certIssueCommand(cert: Command, common: CommonFlags): void {
  common(cert.command('issue [id]'))
    .description(
      'sign a CSR for an existing device (or the device a --token is bound to); prints leaf + issuing CA PEM',
    )
    .requiredOption('--csr <file>', 'PKCS#10 request, PEM or DER; - for standard input')
    .option('--token <token>', 'consume this one-time enrollment token (the device comes from it)')
    .option('--out <file>', 'write the PEM chain to this new file instead of standard output')
    .option('--days <n>', 'lifetime in days (default from config: 30)', parsePositiveInt('--days'))
    .option(
      '--validity <duration>',
      'lifetime as a duration (e.g. 2m, 12h); overrides --days',
      parseDurationOption('--validity'),
    )
    .action(async (id: string | undefined, opts: IssueOptions) => {
      await withContext(opts, async (ctx) => {
        if (id === undefined && opts.token === undefined)
          throw new FleetgateError('USAGE', 'give the device id, or --token');
        // Checked before signing: a certificate is never issued only to fail at delivery.
        if (opts.out !== undefined && existsSync(opts.out))
          throw new FleetgateError('USAGE', `${opts.out} exists; fleetgate will not overwrite it`);
        const csr = await readInput(opts.csr);
        const auth: EnrollmentAuth =
          opts.token !== undefined
            ? { method: 'token', token: opts.token, ...(id !== undefined && { deviceId: id }) }
            : { method: 'operator', deviceId: id as string };
        const result = await issueOne(
          ctx,
          auth,
          csr,
          opts.validity ?? (opts.days === undefined ? undefined : opts.days * DAY),
        );
        if (result.ignored.length > 0)
          note(`ignored from the CSR (the CA decides the content): ${result.ignored.join(', ')}`);
        const pem = result.certificate + result.chain;
        if (opts.out !== undefined) writeNewFile(opts.out, pem, 0o644);
        emit(
          opts,
          {
            ...result,
            notBefore: iso(result.notBefore),
            notAfter: iso(result.notAfter),
            ...(opts.out !== undefined && { out: opts.out }),
          },
          () =>
            opts.out === undefined
              ? pem
              : `issued ${result.serial} for ${result.deviceId} (until ${iso(result.notAfter)}) → ${opts.out}`,
        );
      });
    });
}

/** `fleetgate cert batch`. */
function certBatchCommand(cert: Command, common: CommonFlags): void {
  common(cert.command('batch'))
    .description(
      'sign many CSRs: JSON lines {"device":ID,"csr":PEM} in, one JSON line per result out, each printed only once recorded',
    )
    .requiredOption('--in <file>', 'JSON lines file; - for standard input')
    .option('--validity <duration>', 'lifetime of each certificate', parseDurationOption('--validity'))
    .action(async (opts: CommonOptions & { in: string; validity?: number }) => {
      await withContext(opts, async (ctx) => {
        const input = createInterface({
          input: opts.in === '-' ? process.stdin : createReadStream(opts.in),
          crlfDelay: Infinity,
        });
        let line = 0;
        let failed = 0;
        for await (const text of input) {
          line++;
          if (text.trim() === '') continue;
          let deviceId: unknown;
          try {
            const item = JSON.parse(text) as { device?: unknown; csr?: unknown };
            deviceId = item.device;
            if (typeof item.device !== 'string' || typeof item.csr !== 'string')
              throw new FleetgateError('BAD_REQUEST', `line ${line}: want {"device": string, "csr": string}`);
            const r = await issueOne(
              ctx,
              { method: 'operator', deviceId: item.device },
              Buffer.from(item.csr),
              opts.validity,
            );
            process.stdout.write(
              `${JSON.stringify({ line, device: r.deviceId, serial: r.serial, fingerprint: r.fingerprint, notAfter: iso(r.notAfter), certificate: r.certificate })}\n`,
            );
          } catch (err) {
            failed++;
            const e = toFleetgateError(err);
            process.stdout.write(
              `${JSON.stringify({ line, device: typeof deviceId === 'string' ? deviceId : null, error: { code: e.code, message: e.message } })}\n`,
            );
          }
        }
        if (failed > 0) throw new FleetgateError('BAD_REQUEST', `${failed} of the requests failed (see their lines)`);
      });
    });
}

/** `fleetgate cert list`. */
function certListCommand(cert: Command, common: CommonFlags): void {
  common(cert.command('list'))
    .description('list certificates')
    .option('--device <id>', 'only this device')
    .action(async (opts: CommonOptions & { device?: string }) => {
      await withContext(opts, (ctx) => {
        const rows = ctx
          .registry()
          .listCertificates(opts.device === undefined ? {} : { deviceId: opts.device })
          .map(({ pem: _pem, ...c }) => c);
        emit(opts, rows, () =>
          table(
            ['SERIAL', 'DEVICE', 'NOT AFTER', 'METHOD', 'STATUS'],
            rows.map((c) => [c.serial, c.deviceId, iso(c.notAfter), c.method, certStatus({ ...c, pem: '' })]),
          ),
        );
      });
    });
}

/** `fleetgate cert show`. */
function certShowCommand(cert: Command, common: CommonFlags): void {
  common(cert.command('show <serial>'))
    .description('one certificate, with its PEM')
    .action(async (serial: string, opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const c = requireCert(ctx, serial);
        emit(opts, c, () =>
          [
            `serial       ${c.serial}`,
            `device       ${c.deviceId}`,
            `fingerprint  ${c.fingerprint}`,
            `spki sha256  ${c.spkiSha256}`,
            `valid        ${iso(c.notBefore)} → ${iso(c.notAfter)}`,
            `issued       ${iso(c.issuedAt)} by ${c.actor} (${c.method})`,
            `status       ${certStatus(c)}`,
            c.pem.trimEnd(),
          ].join('\n'),
        );
      });
    });
}

/** `fleetgate cert revoke`. */
function certRevokeCommand(cert: Command, common: CommonFlags): void {
  common(cert.command('revoke <serial>'))
    .description('revoke one certificate (permanent)')
    .option('--reason <reason>', 'RFC 5280 reason: keyCompromise, superseded, …', 'unspecified')
    .action(async (serial: string, opts: CommonOptions & { reason: string }) => {
      await withContext(opts, (ctx) => {
        const reason = parseRevocationReason(opts.reason);
        const c = ctx.registry().revokeCertificate(requireCert(ctx, serial).serial, reason, ctx.actor);
        emit(
          opts,
          { serial: c.serial, deviceId: c.deviceId, revocation: c.revocation },
          () => `revoked ${c.serial} of ${c.deviceId} (${revocationReasonName(c.revocation?.reason ?? reason)})`,
        );
      });
    });
}

function requireCert(ctx: CliContext, input: string): CertificateRecord {
  const serial = normalizeSerial(input);
  if (serial === undefined) throw new FleetgateError('USAGE', `serial ${JSON.stringify(input)} is not hex`);
  const c = ctx.registry().getCertificate(serial);
  if (c === undefined) throw new FleetgateError('CERT_NOT_FOUND', `certificate ${serial} not found`);
  return c;
}
