import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { assertDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { makeClaimCredential } from '../../provisioning/ca/claim.ts';
import { writeNewFile } from '../../runtime/files.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso, table } from '../output.ts';
import { parsePositiveInt, readInput } from '../parse.ts';

const DAY = 86_400_000;

export function registerClaim(program: Command, common: CommonFlags): void {
  const claim = program
    .command('claim')
    .description('claim certificates: factory-wide bootstrap identities for enrollment by hardware serial');

  common(claim.command('create <name>'))
    .description('make a claim key + certificate (provisioning service only, never the gateway) into DIR')
    .requiredOption('--out <dir>', 'directory for claim.crt and claim.key (0600); must not hold them already')
    .option('--days <n>', 'lifetime in days', parsePositiveInt('--days'), 365)
    .option('--fleet <fleet>', 'the fleet every device it enrolls joins (the request cannot choose)', 'default')
    .option(
      '--types <types>',
      'device types it may enroll, comma-separated; the first is the default (sensor, gateway, camera)',
      'sensor',
    )
    .action(async (name: string, opts: CommonOptions & { out: string; days: number; fleet: string; types: string }) => {
      await withContext(opts, async (ctx) => {
        assertDeviceId(name, 'claim name');
        const certFile = join(opts.out, 'claim.crt');
        const keyFile = join(opts.out, 'claim.key');
        for (const f of [certFile, keyFile])
          if (existsSync(f)) throw new FleetgateError('USAGE', `${f} exists; fleetgate will not overwrite it`);
        const cred = await makeClaimCredential(await ctx.ca(), name, opts.days * DAY);
        // Recorded before anyone has it.
        const types = opts.types
          .split(',')
          .map((t) => t.trim())
          .filter(Boolean);
        const record = ctx.registry().createClaim(
          {
            name,
            serial: cred.serial,
            fingerprint: cred.fingerprint,
            notAfter: cred.notAfter,
            pem: cred.certPem,
            fleet: opts.fleet,
            types,
          },
          ctx.actor,
        );
        writeNewFile(keyFile, cred.keyPem, 0o600);
        writeNewFile(certFile, cred.certPem, 0o644);
        emit(
          opts,
          {
            name,
            serial: record.serial,
            notAfter: iso(record.notAfter),
            fleet: record.fleet,
            types: record.types,
            cert: certFile,
            key: keyFile,
          },
          () =>
            `claim ${name} (serial ${record.serial}, until ${iso(record.notAfter)}; fleet ${record.fleet}, types ${record.types.join(',')}) → ${certFile}, ${keyFile}`,
        );
      });
    });

  common(claim.command('allow <name>'))
    .description(
      'add hardware serials (one per line) to what the claim may enroll; each enrolls once, as device hw-<serial>',
    )
    .requiredOption('--serials <file>', 'file with one hardware serial per line; - for standard input')
    .action(async (name: string, opts: CommonOptions & { serials: string }) => {
      await withContext(opts, async (ctx) => {
        const text = (await readInput(opts.serials)).toString('utf8');
        const serials = [
          ...new Set(
            text
              .split(/\r?\n/)
              .map((s) => s.trim())
              .filter((s) => s !== '' && !s.startsWith('#')),
          ),
        ];
        const result = ctx.registry().allowSerials(name, serials, ctx.actor);
        emit(
          opts,
          { name, ...result },
          () => `claim ${name}: ${result.added} serial(s) added, ${result.skipped} already allowed`,
        );
      });
    });

  common(claim.command('revoke <name>'))
    .description('revoke a claim: it can enroll nothing more (devices it enrolled keep their certificates)')
    .action(async (name: string, opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const record = ctx.registry().revokeClaim(name, ctx.actor);
        emit(opts, { name, revokedAt: iso(record.revokedAt) }, () => `revoked claim ${name}`);
      });
    });

  common(claim.command('list'))
    .description('list claims with their allowlist use')
    .action(async (opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const rows = ctx
          .registry()
          .listClaims()
          .map(({ pem: _pem, ...c }) => c);
        emit(opts, rows, () =>
          table(
            ['NAME', 'SERIAL', 'NOT AFTER', 'FLEET', 'TYPES', 'ALLOWED', 'ENROLLED', 'STATUS'],
            rows.map((c) => [
              c.name,
              c.serial,
              iso(c.notAfter),
              c.fleet,
              c.types.join(','),
              String(c.allowed),
              String(c.enrolled),
              c.revokedAt === null ? 'active' : 'revoked',
            ]),
          ),
        );
      });
    });
}
