import type { Command } from 'commander';
import { rootKeyOnDisk } from '../../provisioning/ca/authority.ts';
import { isPostgresUrl, redactLocation } from '../../provisioning/registry/sql.ts';
import { initDataDir } from '../../provisioning/setup.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit } from '../output.ts';

export function registerInit(program: Command, common: CommonFlags): void {
  common(program.command('init'))
    .description('create the data directory, CA (root + issuing), gateway certificate and registry; never overwrites')
    .option('--hostname <name...>', 'extra DNS name or IP for the gateway certificate')
    .action(async (opts: CommonOptions & { hostname?: string[] }) => {
      await withContext(
        opts,
        async (ctx) => {
          const { created } = await initDataDir(ctx.config);
          const rootKey = rootKeyOnDisk(ctx.paths);
          emit(
            opts,
            {
              dataDir: ctx.paths.dataDir,
              created,
              root: ctx.paths.rootCert,
              rootKey: rootKey ?? null,
              intermediate: ctx.paths.intermediateCert,
              registry: redactLocation(ctx.paths.registry),
            },
            () =>
              (created.length === 0
                ? `already initialized: ${ctx.paths.dataDir}`
                : `initialized ${ctx.paths.dataDir}: created ${created.join(', ')}\nroot CA: ${ctx.paths.rootCert}`) +
              (isPostgresUrl(ctx.paths.registry)
                ? `\nregistry: ${redactLocation(ctx.paths.registry)} (schema current)`
                : '') +
              (rootKey === undefined
                ? ''
                : `\nroot CA key: ${rootKey} — the services never read it: move it off this machine and keep it safe;\n  \`fleetgate ca reissue-intermediate --root-key FILE\` needs it to re-sign an issuing CA`),
          );
        },
        { 'ca.hostnames': opts.hostname?.join(',') },
      );
    });
}
