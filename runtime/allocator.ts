import { existsSync } from 'node:fs';

/**
 * The memory allocator of fleetgate's servers. With glibc's malloc a gateway that held 10,000
 * mTLS connections keeps their memory after they close (814 MiB loaded → 828 MiB 30 s after
 * closing, measured; `malloc_trim` would give ~300 MiB back but Node cannot call it): the
 * per-connection buffers of OpenSSL and Node are freed into a fragmented heap that glibc does not
 * return. jemalloc with a background thread returns freed pages within seconds (735 → 412 MiB) and
 * holds ~15 % less per idle connection (57 vs 67 KiB), at the same CPU per connect and message.
 * So the server commands run on jemalloc when the system has it (Debian: `libjemalloc2`): it must
 * be preloaded before the process starts, which `bin/fleetgate.ts` does when it re-executes (execve, same PID) a
 * server command. `FLEETGATE_ALLOCATOR=system` keeps glibc's malloc.
 */
const JEMALLOC = [
  '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2',
  '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2',
  '/usr/lib64/libjemalloc.so.2',
  '/usr/lib/libjemalloc.so.2',
  '/usr/local/lib/libjemalloc.so.2',
];

/**
 * jemalloc's settings per server command; a background thread does the purging even while the
 * process is idle. The gateway (and `up`, which runs it) gives freed pages back at once
 * (`dirty_decay_ms:0`): with jemalloc's default decay (10 s) a 50 MB upload streamed through it
 * left 40–44 MB of freed buffers resident (test/https-upload.test.ts bounds the growth to 30 MB),
 * with 1 s still 34–40 MB in some runs; with 0 it stays within the bound, and no CPU difference was
 * measurable per connect or message. The provisioning service streams nothing large, and there an
 * immediate purge cost ~28 % more CPU per enrollment (1.15 vs 0.90 ms with 16 clients, A/B in
 * one session; 1 s decay as cheap as glibc's malloc), so it purges after 1 s.
 */
const MALLOC_CONF = {
  gateway: 'background_thread:true,dirty_decay_ms:0',
  up: 'background_thread:true,dirty_decay_ms:0',
  provision: 'background_thread:true,dirty_decay_ms:1000',
} as const;

export type ServerCommand = keyof typeof MALLOC_CONF;

/** Whether this process runs on jemalloc (preloaded). */
export function allocatorInUse(env: NodeJS.ProcessEnv = process.env): 'jemalloc' | 'system' {
  return (env.LD_PRELOAD ?? '').includes('libjemalloc') ? 'jemalloc' : 'system';
}

/**
 * What a server process's environment needs to run `command` on jemalloc: nothing when it already
 * does, when `FLEETGATE_ALLOCATOR=system`, or when the library is not installed (glibc's malloc then).
 */
export function allocatorEnv(command: ServerCommand, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  if (env.FLEETGATE_ALLOCATOR === 'system' || allocatorInUse(env) === 'jemalloc') return {};
  const lib = JEMALLOC.find((path) => existsSync(path));
  if (lib === undefined) return {};
  return {
    LD_PRELOAD: [lib, env.LD_PRELOAD].filter((s) => s !== undefined && s !== '').join(' '),
    MALLOC_CONF: [MALLOC_CONF[command], env.MALLOC_CONF].filter((s) => s !== undefined && s !== '').join(','),
  };
}
