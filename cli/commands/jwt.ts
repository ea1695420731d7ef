import type { Command } from 'commander';
import { ensureKeyring, loadKeyring, rotateKeyring } from '../../gateway/https/keyring.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso } from '../output.ts';
import { parseDurationOption } from '../parse.ts';

export function registerJwt(program: Command, common: CommonFlags): void {
  common(program.command('jwks'))
    .description(
      'print the public JWKS origins verify per-request assertions with (also GET /.well-known/jwks.json on the admin listener)',
    )
    .action(async (opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        ctx.registry(); // an initialized data directory
        ensureKeyring(ctx.paths);
        const { jwks } = loadKeyring(ctx.paths);
        emit({ json: true }, jwks, () => '');
      });
    });

  const jwt = program.command('jwt').description('assertion signing keys');
  common(jwt.command('rotate'))
    .description(
      'make a new signing key active; the previous one stays in the JWKS for the overlap (running gateways pick it up within a second)',
    )
    .option(
      '--overlap <duration>',
      'how long the previous key stays published (default from config: 24h)',
      parseDurationOption('--overlap'),
    )
    .action(async (opts: CommonOptions & { overlap?: number }) => {
      await withContext(opts, (ctx) => {
        ctx.registry();
        const result = rotateKeyring(ctx.paths, opts.overlap ?? ctx.config.https.jwtOverlapMs);
        ctx
          .registry()
          .appendAudit(ctx.actor, 'jwt.rotate', result.active, { retired: result.retired, retireAt: result.retireAt });
        emit(
          opts,
          { ...result, retireAt: iso(result.retireAt) },
          () => `active key ${result.active}; ${result.retired} stays in the JWKS until ${iso(result.retireAt)}`,
        );
      });
    });
}
