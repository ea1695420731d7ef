import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { stablePort, untilListening } from './services.ts';

export const NATS_SERVER = process.env.FLEETGATE_NATS_SERVER ?? '/usr/sbin/nats-server';

/** Whether the NATS server binary is here (Debian `nats-server`; `.ci/run` installs it). */
export function natsAvailable(): boolean {
  return existsSync(NATS_SERVER);
}

export interface NatsServer {
  url: string;
  port: number;
  pid(): number | undefined;
  /** Stops it (SIGTERM, then SIGKILL) and waits for the exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
}

/** A nats-server of its own on a loopback port (no JetStream, no persistence), stopped by PID. */
export async function startNats(): Promise<NatsServer> {
  const port = await stablePort(); // restarted on the same port
  let child: ChildProcess | undefined;
  let output = '';
  const server: NatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid: () => child?.pid,
    async start() {
      output = '';
      child = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      child.stderr!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      await untilListening(port, child, 'nats-server', () => output);
    },
    async stop() {
      const c = child;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
  await server.start();
  return server;
}
