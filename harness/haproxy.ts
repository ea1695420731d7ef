import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, untilListening } from './services.ts';

export const HAPROXY = process.env.FLEETGATE_HAPROXY ?? '/usr/sbin/haproxy';

/** Whether Debian's haproxy is here (`.ci/run` installs it). */
export function haproxyAvailable(): boolean {
  return existsSync(HAPROXY);
}

export interface HaproxyFrontend {
  /** What HAProxy sends the backend first: `send-proxy-v2`, `send-proxy` (v1), or nothing. */
  proxy: 'v2' | 'v1' | 'none';
  /** The backend servers (loopback ports). */
  upstreams: number[];
  /** The address HAProxy connects to the backends from (a balancer address the gateway may trust). */
  source: string;
  /**
   * Health checks: `GET <path>` over TLS to each upstream's own port (the gateway's admin
   * listener, `/healthz`), every 300 ms; a server failing three in a row is out (one slow answer on
   * a busy machine is not an outage), passing one is back in.
   */
  check?: { path: string; ports: number[] };
}

export interface Haproxy {
  /** One frontend port per frontend given, in order. */
  ports: number[];
  pid(): number | undefined;
  stop(): Promise<void>;
}

/** HAProxy in `mode tcp` on loopback, in the foreground (`-db`), stopped by PID. */
export async function startHaproxy(frontends: HaproxyFrontend[]): Promise<Haproxy> {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-haproxy-'));
  const ports: number[] = [];
  for (const _ of frontends) ports.push(await freePort());
  const sections = frontends.map((f, i) => {
    const send = f.proxy === 'v2' ? ' send-proxy-v2' : f.proxy === 'v1' ? ' send-proxy' : '';
    const check = (j: number) =>
      f.check === undefined ? '' : ` check port ${f.check.ports[j]} check-ssl verify none inter 300 fall 3 rise 1`;
    return [
      `frontend fe${i}`,
      `  bind 127.0.0.1:${ports[i]}`,
      `  default_backend be${i}`,
      `backend be${i}`,
      '  balance roundrobin',
      // A server that refuses (killed) is retried on another one at once.
      '  retries 2',
      '  option redispatch 1',
      ...(f.check === undefined ? [] : [`  option httpchk GET ${f.check.path}`]),
      ...f.upstreams.map((p, j) => `  server s${j} 127.0.0.1:${p}${send} source ${f.source}${check(j)}`),
    ].join('\n');
  });
  const config = [
    'global',
    '  maxconn 2000',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    ...sections,
    '',
  ].join('\n');
  writeFileSync(join(dir, 'haproxy.cfg'), config);
  const child: ChildProcess = spawn(HAPROXY, ['-f', join(dir, 'haproxy.cfg'), '-db'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (b: Buffer) => {
    output += b.toString();
  });
  child.stderr!.on('data', (b: Buffer) => {
    output += b.toString();
  });
  for (const port of ports) await untilListening(port, child, 'haproxy', () => output);
  return {
    ports,
    pid: () => child.pid,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
