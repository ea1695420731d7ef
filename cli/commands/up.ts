import type { Command } from 'commander';
import { initDataDir } from '../../provisioning/setup.ts';
import { CliContext, type CommonOptions } from '../context.ts';
import { emit } from '../output.ts';
import type { CommonFlags } from '../main.ts';

/** A running service `up` started: what to print, and how to stop it. */
export interface RunningService {
  name: string;
  endpoint: string;
  close(): Promise<void>;
}

export function registerUp(program: Command, common: CommonFlags): void {
  common(program.command('up'))
    .description('initialize the data directory if needed, start the services, run until SIGINT/SIGTERM')
    .action(async (opts: CommonOptions) => {
      const ctx = new CliContext(opts);
      const { created } = await initDataDir(ctx.config);
      const services: RunningService[] = [];
      const stopped = waitForSignal(); // before anything is printed: a signal may follow at once
      emit(opts, { dataDir: ctx.paths.dataDir, created, services: services.map(({ name, endpoint }) => ({ name, endpoint })) }, () => [
        `fleetgate up: data ${ctx.paths.dataDir}${created.length > 0 ? ` (created ${created.join(', ')})` : ''}`,
        `root CA: ${ctx.paths.rootCert}   registry: ${ctx.paths.registry}`,
        ...(services.length === 0
          ? ['no network listeners in this build yet (the gateway and provisioning planes are coming); the registry and CA are ready for the CLI']
          : services.map((s) => `${s.name.padEnd(12)} ${s.endpoint}`)),
        'press Ctrl-C to stop',
      ].join('\n'));
      await stopped;
      await Promise.allSettled(services.map((s) => s.close()));
      ctx.close();
      process.stderr.write('fleetgate: stopped\n');
    });
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    // A pending timer keeps the event loop alive while no listener is open.
    const keepAlive = setInterval(() => undefined, 1 << 30);
    const stop = (signal: NodeJS.Signals) => {
      clearInterval(keepAlive);
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve(signal);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
