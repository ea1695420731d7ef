import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './run.ts';

export type KeySpec = 'ec' | 'ec384' | 'rsa2048' | 'rsa1024' | 'ed25519';

const NEWKEY: Record<KeySpec, string[]> = {
  ec: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'],
  ec384: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'],
  rsa2048: ['-newkey', 'rsa:2048'],
  rsa1024: ['-newkey', 'rsa:1024'],
  ed25519: ['-newkey', 'ed25519'],
};

/**
 * A key and CSR made by `openssl req`, as a factory station would. `extra` adds arguments
 * (e.g. `-addext basicConstraints=critical,CA:TRUE`).
 */
export async function opensslCsr(
  dir: string,
  name: string,
  key: KeySpec = 'ec',
  extra: string[] = [],
): Promise<{ keyFile: string; csrFile: string; csrPem: string }> {
  const keyFile = join(dir, `${name}.key`);
  const csrFile = join(dir, `${name}.csr`);
  const r = await run('openssl', [
    'req',
    '-new',
    ...NEWKEY[key],
    '-nodes',
    '-keyout',
    keyFile,
    '-subj',
    `/CN=${name}`,
    ...extra,
    '-out',
    csrFile,
  ]);
  if (r.code !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
  return { keyFile, csrFile, csrPem: readFileSync(csrFile, 'utf8') };
}

export async function openssl(args: string[], input?: string | Buffer) {
  return run('openssl', args, input === undefined ? {} : { input });
}

/** The first PEM certificate in a string. */
export function firstCert(pem: string): string {
  const m = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(pem);
  if (m === null) throw new Error('no certificate in output');
  return m[0];
}
