import type { Command } from 'commander';
import { reissueIntermediate } from '../../provisioning/ca/authority.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit } from '../output.ts';
import { readInput } from '../parse.ts';

export function registerCa(program: Command, common: CommonFlags): void {
  const ca = program.command('ca').description('the fleet certificate authority');
  common(ca.command('cert'))
    .description('print the root CA certificate (what devices trust); --chain: issuing CA then root')
    .option('--chain', 'print the issuing intermediate followed by the root')
    .action(async (opts: CommonOptions & { chain?: boolean }) => {
      await withContext(opts, async (ctx) => {
        const authority = await ctx.ca();
        const pem = opts.chain === true ? authority.chainPem : authority.rootPem;
        emit(
          opts,
          {
            pem,
            root: { subject: authority.root.subject, notAfter: authority.root.notAfter.toISOString() },
            intermediate: {
              subject: authority.intermediate.subject,
              notAfter: authority.intermediate.notAfter.toISOString(),
            },
          },
          () => pem,
        );
      });
    });

  common(ca.command('reissue-intermediate'))
    .description(
      "make a new issuing CA signed by the root key brought back from offline (then restart the services); the old one's key is deleted, what it issued stays valid",
    )
    .requiredOption('--root-key <file>', 'the root CA private key (PEM); - for standard input')
    .action(async (opts: CommonOptions & { rootKey: string }) => {
      await withContext(opts, async (ctx) => {
        const pem = (await readInput(opts.rootKey)).toString('utf8');
        const result = await reissueIntermediate(ctx.paths, ctx.config.ca, pem);
        ctx.registry().appendAudit(ctx.actor, 'ca.reissue_intermediate', null, {
          subject: result.subject,
          retired: result.retired ?? null,
        });
        emit(
          opts,
          { intermediate: ctx.paths.intermediateCert, subject: result.subject, retired: result.retired ?? null },
          () =>
            `new issuing CA ${result.subject} → ${ctx.paths.intermediateCert}${result.retired === undefined ? '' : ` (old certificate kept in ${result.retired})`}\nrestart fleetgate to use it; put the root key back offline`,
        );
      });
    });
}
