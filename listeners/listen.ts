import type { AddressInfo, Server } from 'node:net';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

/**
 * Binds a server; a port that cannot be bound is a coded error naming the port and the setting
 * that changes it (PORT_IN_USE, or PORT_UNAVAILABLE for permissions and bad addresses), never an
 * unhandled 'error' event. Resolves with the bound port (0 picks a free one).
 */
export function listen(server: Server, port: number, host: string, setting: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(bindError(err, host, port, setting));
    server.once('error', onError);
    server.listen(port, host, () => {
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
