import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SERVER_NODE_FLAGS } from '../../bench/lib.ts';
import { FLEETGATE } from './run.ts';

export interface Stack {
  child: ChildProcess;
  endpoints: Record<string, string>;
  stop(): Promise<void>;
}

/** `fleetgate up` in its own process on ephemeral loopback ports (or the ports given). */
export async function startStack(dataDir: string, env: NodeJS.ProcessEnv = {}): Promise<Stack> {
  const child = spawn(process.execPath, [...SERVER_NODE_FLAGS, FLEETGATE, 'up', '--json', '--data', dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, FLEETGATE_MQTT_PORT: '0', FLEETGATE_WSS_PORT: '0', FLEETGATE_HTTPS_PORT: '0', FLEETGATE_ADMIN_PORT: '0',
      FLEETGATE_PROVISION_PORT: '0', FLEETGATE_LOG_LEVEL: 'warn', ...env,
    },
  });
  child.stderr!.resume();
  let text = '';
  for await (const line of createInterface({ input: child.stdout! })) {
    text += line;
    try {
      const banner = JSON.parse(text) as { services: { name: string; endpoint: string }[] };
      const endpoints = Object.fromEntries(banner.services.map((s) => [s.name, s.endpoint.split(' ')[0]!]));
      return {
        child, endpoints,
        stop: () => new Promise((resolve) => {
          if (child.exitCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        }),
      };
    } catch {
      // not complete yet
    }
  }
  throw new Error(`fleetgate up exited before printing its endpoints (data ${join(dataDir)})`);
}
