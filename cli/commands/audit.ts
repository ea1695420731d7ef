import type { Command } from 'commander';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso, table } from '../output.ts';
import { parseDurationOption, parseNonNegativeInt } from '../parse.ts';

export function registerAudit(program: Command, common: CommonFlags): void {
  common(program.command('audit'))
    .description(
      'read the append-only audit log: the newest entries first (50 by default), or everything after --since SEQ, oldest first',
    )
    .option(
      '--since <seq>',
      'entries after this sequence number, oldest first (to read on from where you stopped)',
      parseNonNegativeInt('--since'),
    )
    .option(
      '--limit <n>',
      'at most this many entries (0: all; default 50, or all with --since)',
      parseNonNegativeInt('--limit'),
    )
    .option('--device <id>', 'only entries about this device (its own and its denylist entries)')
    .option(
      '--after <duration>',
      'only entries newer than this, e.g. 1h, 7d (newest first)',
      parseDurationOption('--after'),
    )
    .action(async (opts: CommonOptions & { since?: number; limit?: number; device?: string; after?: number }) => {
      await withContext(opts, (ctx) => {
        const tail = opts.since !== undefined;
        const limit = opts.limit === 0 ? -1 : (opts.limit ?? (tail ? -1 : 50));
        const rows = ctx.registry().listAudit({
          ...(tail ? { since: opts.since } : { newest: true }),
          limit,
          ...(opts.device !== undefined && { device: opts.device }),
          ...(opts.after !== undefined && { after: Date.now() - opts.after }),
        });
        emit(opts, rows, () =>
          table(
            ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'SUBJECT', 'DETAIL'],
            rows.map((r) => [String(r.seq), iso(r.at), r.actor, r.action, r.subject ?? '-', JSON.stringify(r.detail)]),
          ),
        );
      });
    });
}
