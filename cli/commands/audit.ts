import type { Command } from 'commander';
import { withContext, type CommonOptions } from '../context.ts';
import { emit, iso, table } from '../output.ts';
import { parseNonNegativeInt } from '../parse.ts';
import type { CommonFlags } from '../main.ts';

export function registerAudit(program: Command, common: CommonFlags): void {
  common(program.command('audit'))
    .description('read the append-only audit log')
    .option('--since <seq>', 'only entries after this sequence number', parseNonNegativeInt('--since'), 0)
    .option('--limit <n>', 'at most this many entries', parseNonNegativeInt('--limit'))
    .action(async (opts: CommonOptions & { since: number; limit?: number }) => {
      await withContext(opts, (ctx) => {
        const rows = ctx.registry().listAudit({ since: opts.since, ...(opts.limit !== undefined && { limit: opts.limit }) });
        emit(opts, rows, () => table(['SEQ', 'TIME', 'ACTOR', 'ACTION', 'SUBJECT', 'DETAIL'],
          rows.map((r) => [String(r.seq), iso(r.at), r.actor, r.action, r.subject ?? '-', JSON.stringify(r.detail)])));
      });
    });
}
