import type { CertificateRecord } from '../registry/records.ts';
import type { NewCertificate, RegistryWriter } from '../registry/writer.ts';

/** What an enrollment method decided: which device the certificate is for, and how it is recorded. */
export interface Authorized {
  deviceId: string;
  method: string;
  /** Records the signed certificate in one transaction that re-checks the method; throws to discard it. */
  record(registry: RegistryWriter, cert: NewCertificate, actor: string): CertificateRecord;
  /** Facts for the audit row and the log (never a token). */
  detail?: Record<string, unknown>;
}
