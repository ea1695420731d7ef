import { statSync } from 'node:fs';
import type { Logger } from 'pino';
import type { DataPaths } from '../../config/paths.ts';
import { AssertionMinter } from './assertion.ts';
import { deleteRetiredKeys, ensureKeyring, keyringFile, loadKeyring } from './keyring.ts';

/**
 * The assertion signing keys: created on first start, reloaded when `fleetgate jwt rotate`
 * changes them (checked every second), retired keys deleted when their overlap has passed.
 */
export function watchKeyring(paths: DataPaths, issuer: string, log: Logger): { minter: AssertionMinter; stop(): void } {
  ensureKeyring(paths);
  let keyring = loadKeyring(paths);
  const minter = new AssertionMinter(issuer, keyring.active);
  const timer = setInterval(() => {
    try {
      if (keyring.nextRetireAt !== null && keyring.nextRetireAt <= Date.now()) {
        const gone = deleteRetiredKeys(paths);
        if (gone.length > 0) log.info({ kids: gone }, 'retired assertion signing keys deleted');
        keyring = loadKeyring(paths);
      }
      if (statSync(keyringFile(paths)).mtimeMs === keyring.mtimeMs) return;
      keyring = loadKeyring(paths);
      minter.setKey(keyring.active);
      log.info({ kid: keyring.active.kid }, 'assertion signing key reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'assertion keyring cannot be read; keeping the current key');
    }
  }, 1_000);
  timer.unref();
  return { minter, stop: () => clearInterval(timer) };
}
