#!/usr/bin/env -S node --max-semi-space-size=2
// fleetgate: the operator CLI. Runs on the project's pinned Node 24 (`npx fleetgate`, `npm start`).
// --max-semi-space-size=2 (MB): V8 collects the young generation often enough that buffers a
// proxied stream leaves behind are freed promptly (a 50 MB upload: +55 MB RSS at V8's default,
// under 30 MB with this). Servers started another way should pass the same flags (SERVER_NODE_FLAGS).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { allocatorEnv, type ServerCommand } from '../runtime/allocator.ts';

const SERVER_COMMANDS = new Set<string>(['up', 'gateway', 'provision'] satisfies ServerCommand[]);
const OPENSSL_CONFIG = join(import.meta.dirname, '..', 'config', 'openssl.cnf');
const args = process.argv.slice(2);

// The servers need settings a process only reads at start-up: OpenSSL's (config/openssl.cnf: no
// TLS 1.3 session tickets at all) and the allocator (jemalloc when installed, runtime/allocator.ts:
// memory goes back to the system after connections close). Started without them, a server
// command replaces itself with itself run with them (execve: the same PID, so a signal sent to the
// PID it was started as — SIGKILL included — reaches the server, and nothing is left behind).
// Where execve is missing (Windows), it runs as a child instead, signals passed through.
const needsOpenssl = !process.execArgv.some((a) => a.startsWith('--openssl-config'));
const server = SERVER_COMMANDS.has(args[0] ?? '') ? (args[0] as ServerCommand) : undefined;
const allocator = server === undefined ? {} : allocatorEnv(server);
if (server !== undefined && (needsOpenssl || Object.keys(allocator).length > 0)) {
  const flags = needsOpenssl ? [...process.execArgv, `--openssl-config=${OPENSSL_CONFIG}`] : process.execArgv;
  const argv = [...flags, process.argv[1]!, ...args];
  const env = { ...process.env, ...allocator } as Record<string, string>;
  if (typeof process.execve === 'function') process.execve(process.execPath, [process.execPath, ...argv], env);
  const child = spawn(process.execPath, argv, { stdio: 'inherit', env });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => {
    process.exitCode = code ?? (signal === null ? 1 : 128);
  });
} else {
  const { main } = await import('../cli/main.ts');
  process.exitCode = await main(args);
}
