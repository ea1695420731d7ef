import type { Command } from 'commander';

/** Adds the options every command takes. */
export type CommonFlags = (cmd: Command) => Command;

export const common: CommonFlags = (cmd) =>
  cmd
    .option('--data <dir>', 'data directory (env FLEETGATE_DATA)', undefined)
    .option('--config <file>', 'config file (env FLEETGATE_CONFIG; default <data>/fleetgate.json)')
    .option(
      '--registry <location>',
      'registry: sqlite:FILE or postgres://… (env FLEETGATE_REGISTRY; default <data>/registry.db)',
    )
    .option('--json', 'machine-readable output (errors too, on stderr)');
