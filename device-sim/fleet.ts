import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { enrollWithToken } from '../firmware-sdk/enroll.ts';
import { loadIdentity } from '../firmware-sdk/identity.ts';
import type { Progress, Report } from './report.ts';

/** The operator CLI of this checkout: the simulator registers devices through it, like an operator. */
export const FLEETGATE_BIN = resolve(import.meta.dirname, '..', 'bin', 'fleetgate.ts');

export interface PlannedDevice {
  id: string;
  type: 'sensor' | 'gateway' | 'camera' | 'service';
  parent?: string;
  /** Children have no connection of their own: their gateway publishes for them. */
  child?: boolean;
}

export interface Plan {
  devices: PlannedDevice[];
  service: PlannedDevice;
}

const pad = (n: number, width: number) => String(n).padStart(width, '0');

export function planFleet(o: {
  sensors: number;
  gateways: number;
  children: number;
  cameras: number;
  prefix: string;
}): Plan {
  const devices: PlannedDevice[] = [];
  // One width for every run size (6 digits: a million devices), so runs of different sizes share
  // identities: sim-s000001 is the same device with 50 sensors or 200,000.
  const w = Math.max(6, String(Math.max(o.sensors, o.gateways, o.cameras)).length);
  for (let i = 1; i <= o.sensors; i++) devices.push({ id: `${o.prefix}-s${pad(i, w)}`, type: 'sensor' });
  for (let g = 1; g <= o.gateways; g++) {
    const id = `${o.prefix}-g${pad(g, w)}`;
    devices.push({ id, type: 'gateway' });
    for (let c = 1; c <= o.children; c++) devices.push({ id: `${id}-c${c}`, type: 'sensor', parent: id, child: true });
  }
  for (let i = 1; i <= o.cameras; i++) devices.push({ id: `${o.prefix}-c${pad(i, w)}`, type: 'camera' });
  return { devices, service: { id: `${o.prefix}-service`, type: 'service' } };
}

/** Runs the operator CLI; resolves with its stdout, rejects with its error line. */
export function fleetgateCli(args: string[], input?: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [FLEETGATE_BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    child.on('error', reject);
    child.stdin.on('error', () => undefined); // a CLI that exits early reports itself through its exit code
    child.on('close', (code) =>
      code === 0
        ? resolvePromise(out)
        : reject(
            Object.assign(new Error(`fleetgate ${args.slice(0, 2).join(' ')}: ${err.trim() || `exit ${code}`}`), {
              stdout: out,
            }),
          ),
    );
    child.stdin.end(input ?? '');
  });
}

function identityUsable(dir: string): boolean {
  if (!existsSync(join(dir, 'current'))) return false;
  try {
    const { info } = loadIdentity(dir);
    return info.notAfter - Date.now() > (info.notAfter - info.notBefore) / 2; // more than half its life left
  } catch {
    return false;
  }
}

/**
 * Every simulated device gets its own key and certificate through the real flow: the operator
 * CLI registers it and issues a one-time token (`fleetgate device import`), and the device
 * enrolls over the provisioning API with a key it made. Identities are cached in
 * `identitiesDir`: a second run enrolls only what is missing or past half its life.
 */
export async function ensureIdentities(
  plan: Plan,
  o: {
    dataDir: string;
    identitiesDir: string;
    provisioningUrl: string;
    ca: string;
    concurrency: number;
    report: Report;
    progress: Progress;
  },
): Promise<void> {
  const started = Date.now();
  const withIdentity = [...plan.devices.filter((d) => !d.child), plan.service];
  const needed = withIdentity.filter((d) => !identityUsable(join(o.identitiesDir, d.id)));
  const lines = [...plan.devices, plan.service].map((d) =>
    JSON.stringify({
      id: d.id,
      type: d.type,
      fleet: 'sim',
      ...(d.parent && { parent: d.parent }),
      token: needed.includes(d),
    }),
  );
  const imported = await fleetgateCli(
    ['device', 'import', '--in', '-', '--data', o.dataDir],
    `${lines.join('\n')}\n`,
  ).catch((err: Error) => {
    // import exits non-zero when some lines failed; its stdout still says which.
    const out = (err as Error & { stdout?: string }).stdout;
    if (out === undefined) throw err;
    return out;
  });
  const tokens = new Map<string, string>();
  const retired = new Set<string>();
  for (const line of imported.split('\n')) {
    if (line.trim() === '') continue;
    const r = JSON.parse(line) as { id?: string; token?: string; error?: { code: string; message: string } };
    // A device revoked by an earlier run (--revoke-during) stays revoked: leave it out.
    if (r.error?.code === 'DEVICE_REVOKED' && r.id !== undefined) retired.add(r.id);
    else if (r.error) throw new Error(`registering the fleet: ${r.error.message}`);
    if (r.token !== undefined) tokens.set(r.id!, r.token);
  }
  // Devices an earlier run revoked (--revoke-during) stay revoked, whatever import said of them:
  // the registry's own list decides.
  const listed = JSON.parse(
    await fleetgateCli(['device', 'list', '--fleet', 'sim', '--json', '--data', o.dataDir]),
  ) as { id: string; status: string }[];
  for (const d of listed) if (d.status === 'revoked') retired.add(d.id);
  if (retired.size > 0) {
    plan.devices = plan.devices.filter((d) => !retired.has(d.id) && !retired.has(d.parent ?? ''));
    needed.splice(0, needed.length, ...needed.filter((d) => !retired.has(d.id)));
    const left = [...retired].filter((id) => withIdentity.some((d) => d.id === id)).length;
    if (left > 0) process.stdout.write(`note: ${left} device(s) revoked by an earlier run are left out\n`);
  }
  mkdirSync(o.identitiesDir, { recursive: true, mode: 0o700 });
  if (needed.length > 0) o.progress.start('enrolling', needed.length);
  let done = 0;
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(o.concurrency, needed.length) }, async () => {
      while (next < needed.length) {
        const d = needed[next++]!;
        await enrollWithToken({
          server: o.provisioningUrl,
          ca: o.ca,
          identityDir: join(o.identitiesDir, d.id),
          token: tokens.get(d.id)!,
        });
        done++;
        const seconds = (Date.now() - started) / 1000;
        o.progress.update('enrolling', done, needed.length, `${(done / Math.max(seconds, 0.001)).toFixed(0)}/s`);
      }
    }),
  );
  o.progress.stop();
  o.report.enrollment = {
    enrolled: needed.length,
    cached: withIdentity.length - needed.length,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  };
}
