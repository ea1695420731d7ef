import { renameSync } from 'node:fs';
import type { Command } from 'commander';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { buildCrl, crlPem } from '../../provisioning/ca/crl.ts';
import { writeNewFile } from '../../runtime/files.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit } from '../output.ts';

export function registerCrl(program: Command, common: CommonFlags): void {
  common(program.command('crl'))
    .description('sign and print a fresh CRL of the issuing CA (DER; --pem for PEM)')
    .option('--out <file>', 'write to this file (replaced atomically)')
    .option('--pem', 'PEM instead of DER')
    .action(async (opts: CommonOptions & { out?: string; pem?: boolean }) => {
      await withContext(opts, async (ctx) => {
        if (opts.out === undefined && opts.pem !== true && opts.json !== true && process.stdout.isTTY) {
          throw new FleetgateError(
            'USAGE',
            'the CRL is binary DER: give --out FILE, --pem, or redirect standard output',
          );
        }
        const registry = ctx.registry();
        const ca = await ctx.ca();
        const entries = registry.listRevocations();
        const number = registry.nextCrlNumber(ctx.actor);
        const der = await buildCrl(ca, { number, entries, validityMs: ctx.config.ca.crlValidityMs });
        const body = opts.pem === true || opts.json === true ? crlPem(der) : der;
        if (opts.out !== undefined) {
          const tmp = `${opts.out}.${process.pid}.new`;
          writeNewFile(tmp, body, 0o644);
          renameSync(tmp, opts.out);
        }
        if (opts.json === true) {
          emit(
            opts,
            { number, entries: entries.length, pem: crlPem(der), ...(opts.out !== undefined && { out: opts.out }) },
            () => '',
          );
        } else if (opts.out === undefined) {
          process.stdout.write(body);
        } else {
          process.stderr.write(`fleetgate: CRL #${number} with ${entries.length} entries → ${opts.out}\n`);
        }
      });
    });
}
