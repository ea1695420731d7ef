import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestContext } from 'node:test';

export const ROOT = resolve(import.meta.dirname, '..');
export const FLEETGATE = join(ROOT, 'bin', 'fleetgate.ts');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion (no shell), with optional standard input. */
export function run(
  cmd: string,
  args: readonly string[],
  options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      env: { ...process.env, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 60_000,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    // A program that exits without reading its standard input makes our write fail with EPIPE:
    // that is its business, reported through its exit code.
    child.stdin.on('error', () => undefined);
    child.on('close', (code, signal) =>
      resolvePromise({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
    child.stdin.end(options.input ?? '');
  });
}

/** Runs the `fleetgate` CLI on this Node (the pinned Node 24 under `npm test`). */
export function fleetgate(
  args: readonly string[],
  options: { input?: string | Buffer; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return run(process.execPath, [FLEETGATE, ...args], {
    ...options,
    env: { FLEETGATE_ACTOR: 'test-operator', ...options.env },
  });
}

/** Like {@link fleetgate}, but fails the test unless it exits 0; returns stdout. */
export async function fleetgateOk(args: readonly string[], options: { input?: string | Buffer } = {}): Promise<string> {
  const r = await fleetgate(args, options);
  if (r.code !== 0) throw new Error(`fleetgate ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** A temp directory removed after the test. */
export function tempDir(t: TestContext | { after(fn: () => void): void }, prefix = 'fleetgate-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Parses the one-line JSON error the CLI prints on stderr with --json. */
export function errorCode(r: RunResult): string | undefined {
  try {
    return (JSON.parse(r.stderr.trim().split('\n').pop() ?? '') as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

/**
 * For fixtures shared by a whole test file (made in `before`): collects clean-ups and runs
 * them, last first, in the file's `after` hook.
 */
export function fileScope(after: (fn: () => Promise<void>) => void): { after(fn: () => unknown): void } {
  const fns: (() => unknown)[] = [];
  after(async () => {
    for (const fn of fns.reverse()) await fn();
  });
  return { after: (fn) => void fns.push(fn) };
}
