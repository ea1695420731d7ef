// A provisioning instance in miniature, for test/registry-engines.test.ts: a thread with its own
// RegistryWriter (its own PostgreSQL connection) that records one certificate per token it is
// given, as enrollment does, and says which it won; or suspends and resumes devices in a loop.
import { parentPort, workerData } from 'node:worker_threads';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

const { url, job, tokens, devices, rounds, name } = workerData as {
  url: string;
  job: 'enroll' | 'flip';
  tokens?: { hash: string; deviceId: string }[];
  devices?: string[];
  rounds?: number;
  name: string;
};
const writer = new RegistryWriter(url);
const won: string[] = [];
const refused: Record<string, number> = {};
if (job === 'enroll') {
  for (const [i, t] of tokens!.entries()) {
    const serial = `${name}-${String(i).padStart(4, '0')}`;
    try {
      writer.recordCertificate(
        {
          serial,
          deviceId: t.deviceId,
          fingerprint: serial.padEnd(64, 'f'),
          spkiSha256: serial.padEnd(64, 'e'),
          notBefore: 0,
          notAfter: Date.now() + 86_400_000,
          pem: 'PEM',
          method: 'token',
          tokenHash: t.hash,
        },
        name,
      );
      won.push(t.hash);
    } catch (err) {
      const code = err instanceof FleetgateError ? err.code : `not coded: ${(err as Error).message}`;
      refused[code] = (refused[code] ?? 0) + 1;
    }
  }
} else {
  for (let r = 0; r < rounds!; r++) {
    for (const id of devices!) {
      writer.suspendDevice(id, name);
      writer.resumeDevice(id, name);
    }
  }
}
writer.close();
parentPort!.postMessage({ won, refused });
