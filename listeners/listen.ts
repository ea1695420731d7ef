import type { AddressInfo, Server } from 'node:net';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

/**
 * Whether this process is one of several gateway workers sharing each listener's port
 * (`--workers`: the supervisor sets `FLEETGATE_REUSE_PORT=1`): the kernel spreads new connections
 * over the workers' sockets (SO_REUSEPORT).
 */
export const reusePort = (): boolean => process.env.FLEETGATE_REUSE_PORT === '1';

/**
 * Binds a server; a port that cannot be bound is a coded error naming the port and the setting
 * that changes it (PORT_IN_USE, or PORT_UNAVAILABLE for permissions and bad addresses), never an
 * unhandled 'error' event. Resolves with the bound port (0 picks a free one).
 */
export function listen(server: Server, port: number, host: string, setting: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(bindError(err, host, port, setting));
    server.once('error', onError);
    server.listen({ port, host, reusePort: reusePort() }, () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

export function bindError(err: NodeJS.ErrnoException, host: string, port: number, setting: string): FleetgateError {
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  if (err.code === 'EADDRINUSE') {
    return new FleetgateError(
      'PORT_IN_USE',
      `${where} is already in use (is another fleetgate running?); choose another port with ${setting}`,
      { detail: { host, port, setting }, cause: err },
    );
  }
  return new FleetgateError(
    'PORT_UNAVAILABLE',
    `cannot listen on ${where}: ${err.code ?? err.message}; check ${setting} and the host address`,
    { detail: { host, port, setting }, cause: err },
  );
}

/** What {@link listenApp} needs of a fastify instance (listen, close, its server). */
interface App {
  listen(opts: { host: string; port: number; reusePort?: boolean }): Promise<string>;
  close(): PromiseLike<undefined> | Promise<void>;
  server: Server;
}

/**
 * Binds a fastify listener: on failure the app is closed, `cleanup` runs (what was opened for
 * it), and the coded bind error goes up (PORT_IN_USE, PORT_UNAVAILABLE). Resolves with the
 * bound port. The one listen path for every fastify listener (admin, HTTPS, console, provisioning).
 */
export async function listenApp(
  app: App,
  at: { host: string; port: number; setting: string },
  cleanup: () => unknown = () => undefined,
): Promise<number> {
  try {
    await app.listen({ host: at.host, port: at.port, reusePort: reusePort() });
  } catch (err) {
    await app.close();
    await cleanup();
    throw bindError(err as NodeJS.ErrnoException, at.host, at.port, at.setting);
  }
  const address = app.server.address();
  return typeof address === 'object' && address !== null ? (address as AddressInfo).port : at.port;
}
