import type { Command } from 'commander';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso, table } from '../output.ts';
import { parseDurationOption } from '../parse.ts';

interface TargetOptions extends CommonOptions {
  fingerprint?: string;
  spki?: string;
  device?: string;
}

/** Exactly one of --fingerprint, --spki, --device. */
function target(opts: TargetOptions): { kind: string; value: string } {
  const given = (['fingerprint', 'spki', 'device'] as const).filter((k) => opts[k] !== undefined);
  if (given.length !== 1)
    throw new FleetgateError('USAGE', 'give exactly one of --fingerprint HEX, --spki HEX, --device ID');
  const kind = given[0] as 'fingerprint' | 'spki' | 'device';
  return { kind, value: opts[kind] as string };
}

const targetOptions = (cmd: Command): Command =>
  cmd
    .option('--fingerprint <hex>', 'SHA-256 fingerprint of a certificate (colons and any case accepted)')
    .option('--spki <hex>', 'SHA-256 of a public key (SubjectPublicKeyInfo): every certificate for that key')
    .option('--device <id>', 'a device id');

export function registerDeny(program: Command, common: CommonFlags): void {
  const deny = program.command('deny').description('the denylist: refused certificates, keys and devices');

  common(targetOptions(deny.command('add')))
    .description('deny a certificate fingerprint, a key (SPKI hash) or a device')
    .option('--reason <text>', 'why (audit log)')
    .option(
      '--expires <duration>',
      'remove the entry after this long (e.g. 24h); default: never',
      parseDurationOption('--expires'),
    )
    .action(async (opts: TargetOptions & { reason?: string; expires?: number }) => {
      await withContext(opts, (ctx) => {
        const entry = ctx.registry().addDeny(
          {
            ...target(opts),
            reason: opts.reason ?? null,
            expiresAt: opts.expires === undefined ? null : Date.now() + opts.expires,
          },
          ctx.actor,
        );
        emit(
          opts,
          entry,
          () =>
            `denied ${entry.kind} ${entry.value}${entry.expiresAt === null ? '' : ` until ${iso(entry.expiresAt)}`}`,
        );
      });
    });

  common(deny.command('list'))
    .description('list denylist entries (expired ones are marked)')
    .action(async (opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const now = Date.now();
        const rows = ctx
          .registry()
          .listDenylist()
          .map((e) => ({ ...e, active: e.expiresAt === null || e.expiresAt > now }));
        emit(opts, rows, () =>
          table(
            ['KIND', 'VALUE', 'EXPIRES', 'ACTIVE', 'REASON'],
            rows.map((e) => [e.kind, e.value, iso(e.expiresAt), e.active ? 'yes' : 'expired', e.reason ?? '-']),
          ),
        );
      });
    });

  common(targetOptions(deny.command('remove')))
    .description('remove a denylist entry')
    .action(async (opts: TargetOptions) => {
      await withContext(opts, (ctx) => {
        const { kind, value } = target(opts);
        const entry = ctx.registry().removeDeny(kind, value, ctx.actor);
        emit(opts, entry, () => `removed ${entry.kind} ${entry.value} from the denylist`);
      });
    });
}
