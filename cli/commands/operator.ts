import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { urlHost } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { writeNewFile } from '../../runtime/files.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { issueWithNewKey } from '../operator.ts';
import { emit, iso, note } from '../output.ts';
import { parseDurationOption, readInput } from '../parse.ts';

const DEFAULT_VALIDITY_MS = 30 * 86_400_000;

/**
 * A PKCS#12 bundle (key, certificate, issuing CA) sealed with `password`, made by the `openssl`
 * command: the format browsers and OS key stores import, written by the tool every platform
 * ships (OpenSSL 3 defaults: AES-256-CBC with PBKDF2, HMAC-SHA256 integrity). The key goes to
 * openssl on its standard input and the password in its environment, never on a command line or disk.
 */
function pkcs12(keyPem: string, chainPem: string, name: string, password: string): Promise<Buffer> {
  return new Promise<Buffer>((done, fail) => {
    // Without -in and -inkey, openssl reads the key and the certificates from its standard input.
    const child = spawn('openssl', ['pkcs12', '-export', '-name', name, '-passout', 'env:FLEETGATE_P12_PASSWORD'], {
      env: { ...process.env, FLEETGATE_P12_PASSWORD: password },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => undefined); // openssl gone early: its exit says why
    child.on('error', (e: NodeJS.ErrnoException) =>
      fail(
        new FleetgateError(
          'INTERNAL',
          e.code === 'ENOENT'
            ? 'the openssl command is needed to write a PKCS#12 bundle (Debian/Ubuntu: apt-get install openssl)'
            : `openssl: ${e.message}`,
        ),
      ),
    );
    child.on('close', (code) => {
      if (code === 0) done(Buffer.concat(out));
      else
        fail(
          new FleetgateError('INTERNAL', `openssl pkcs12 failed (${code}): ${Buffer.concat(err).toString().trim()}`),
        );
    });
    child.stdin.end(keyPem + chainPem);
  });
}

export function registerOperator(program: Command, common: CommonFlags): void {
  const operator = program
    .command('operator')
    .description('people who run the fleet: certificates for the console and the admin API');

  common(operator.command('issue <id>'))
    .description(
      'issue a certificate to an operator (or, with --auditor, a read-only auditor) and write it with its new key as a PKCS#12 bundle to import into a browser; the bundle password is printed once unless --password-file is given',
    )
    .requiredOption('--p12 <file>', 'where to write the bundle (must not exist)')
    .option('--auditor', 'may look at the console but not act')
    .option('--validity <duration>', 'certificate lifetime (e.g. 30d, 12h)', parseDurationOption('--validity'))
    .option('--password-file <file>', 'read the bundle password from this file (first line; - for standard input)')
    .action(
      async (
        id: string,
        opts: CommonOptions & { p12: string; auditor?: boolean; validity?: number; passwordFile?: string },
      ) => {
        await withContext(opts, async (ctx) => {
          const type = opts.auditor === true ? 'auditor' : 'operator';
          const file = resolve(opts.p12);
          if (existsSync(file))
            throw new FleetgateError(
              'USAGE',
              `${file} exists: choose another --p12 file (an old bundle is never overwritten)`,
            );
          const given =
            opts.passwordFile === undefined
              ? undefined
              : (await readInput(opts.passwordFile)).toString('utf8').split(/\r?\n/)[0]!;
          if (given !== undefined && given.length < 8)
            throw new FleetgateError('USAGE', 'the bundle password must have at least 8 characters');
          const password = given ?? randomBytes(15).toString('base64url');
          const registry = ctx.registry();
          const existing = registry.getDevice(id);
          if (existing !== undefined && existing.type !== type) {
            throw new FleetgateError('DEVICE_EXISTS', `${id} exists as a device of type ${existing.type}, not ${type}`);
          }
          if (existing === undefined) registry.addDevice({ id, type, fleet: 'operators' }, ctx.actor);
          const { keyPem, issued } = await issueWithNewKey(ctx, id, opts.validity ?? DEFAULT_VALIDITY_MS);
          try {
            writeNewFile(
              file,
              await pkcs12(keyPem, issued.certificate + issued.chain, `fleetgate ${type} ${id}`, password),
              0o600,
            );
          } catch (err) {
            // The key exists nowhere else: the certificate for it must not stay valid.
            registry.revokeCertificate(issued.serial, 5, ctx.actor);
            throw err;
          }
          const g = ctx.config.gateway;
          const consoleUrl = `https://${urlHost(g.consoleHost)}:${g.consolePort}/`;
          const result = {
            id,
            type,
            serial: issued.serial,
            notAfter: iso(issued.notAfter),
            p12: file,
            console: consoleUrl,
            ...(given === undefined && { password }),
          };
          emit(opts, result, () => {
            note(
              `${type} ${id}: certificate ${issued.serial} (valid until ${iso(issued.notAfter)}) and its key written to ${file} (0600)`,
            );
            note(`import it into the browser (docs/console.md), then open ${consoleUrl}`);
            if (given === undefined) note('the bundle password (shown once) is on stdout');
            return given === undefined ? password : file;
          });
        });
      },
    );
}
