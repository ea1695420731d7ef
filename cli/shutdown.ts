import type { Logger } from 'pino';

/**
 * A server command's shutdown: `stop` runs to its end, then `fleetgate: stopped` on stderr — but a
 * shutdown that cannot finish (a link that never answers) does not keep the process: after `ms`,
 * it logs why and exits 1.
 */
export async function stopWithin(log: Logger, ms: number, stop: () => Promise<unknown>): Promise<void> {
  const force = setTimeout(() => {
    log.error(`shutdown did not finish in ${ms / 1000} s: exiting now`);
    process.exit(1);
  }, ms);
  force.unref();
  await stop();
  clearTimeout(force);
  process.stderr.write('fleetgate: stopped\n');
}
