import type { Command } from 'commander';
import { withContext, type CommonOptions } from '../context.ts';
import { emit } from '../output.ts';
import type { CommonFlags } from '../main.ts';

export function registerCa(program: Command, common: CommonFlags): void {
  const ca = program.command('ca').description('the fleet certificate authority');
  common(ca.command('cert'))
    .description('print the root CA certificate (what devices trust); --chain: issuing CA then root')
    .option('--chain', 'print the issuing intermediate followed by the root')
    .action(async (opts: CommonOptions & { chain?: boolean }) => {
      await withContext(opts, async (ctx) => {
        const authority = await ctx.ca();
        const pem = opts.chain === true ? authority.chainPem : authority.rootPem;
        emit(opts, {
          pem,
          root: { subject: authority.root.subject, notAfter: authority.root.notAfter.toISOString() },
          intermediate: { subject: authority.intermediate.subject, notAfter: authority.intermediate.notAfter.toISOString() },
        }, () => pem);
      });
    });
}
