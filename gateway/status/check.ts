import { statSync } from 'node:fs';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { RegistryReader } from '../../provisioning/registry/reader.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import type { PeerIdentity } from '../identity/peer.ts';

/** A device whose certificate passed every check. */
export interface Admitted {
  device: DeviceRecord;
  identity: PeerIdentity;
}

/**
 * The status check of one certificate against the registry, as the registry says now:
 * issued by us (serial and fingerprint recorded) → not revoked → within validity → device
 * neither suspended nor revoked → not denylisted (fingerprint, key, device). Prepared
 * statements, microseconds each.
 *
 * **Fails closed**: if the registry cannot be read — the file is gone, replaced, locked or
 * corrupt — the check throws REGISTRY_UNAVAILABLE and the caller refuses.
 */
export class StatusChecker {
  readonly #file: string;
  #reader: RegistryReader | undefined;
  #inode = 0;

  constructor(file: string) {
    this.#file = file;
  }

  /** The read side, reopened if the file was replaced; throws REGISTRY_UNAVAILABLE. */
  reader(): RegistryReader {
    let inode: number;
    try {
      inode = statSync(this.#file).ino;
    } catch (err) {
      this.#drop();
      throw new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${this.#file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}`, { cause: err });
    }
    if (this.#reader === undefined || inode !== this.#inode) {
      this.#drop();
      this.#reader = new RegistryReader(this.#file); // throws REGISTRY_UNAVAILABLE itself
      this.#reader.db.pragma('busy_timeout = 250'); // a locked registry refuses fast instead of stalling handshakes
      this.#inode = inode;
    }
    return this.#reader;
  }

  #drop(): void {
    this.#reader?.close();
    this.#reader = undefined;
  }

  check(identity: PeerIdentity, now = Date.now()): Admitted {
    try {
      return this.#check(this.reader(), identity, now);
    } catch (err) {
      if (err instanceof FleetgateError) throw err;
      this.#drop();
      throw new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${this.#file} cannot be read: ${(err as Error).message}`, { cause: err });
    }
  }

  #check(reader: RegistryReader, identity: PeerIdentity, now: number): Admitted {
    const detail = { serial: identity.serial, fingerprint: identity.fingerprint, deviceId: identity.deviceId };
    const cert = reader.getCertificate(identity.serial);
    // Signed with the fleet's key but never recorded (or recorded for another certificate):
    // shuts out anything made with a stolen CA key outside the registry.
    if (cert === undefined || cert.fingerprint !== identity.fingerprint || cert.deviceId !== identity.deviceId) {
      throw new FleetgateError('CERT_UNKNOWN', `certificate ${identity.serial} was not issued by this registry`, { detail });
    }
    if (cert.revocation !== null) throw new FleetgateError('CERT_REVOKED', `certificate ${identity.serial} is revoked (reason ${cert.revocation.reason})`, { detail });
    if (now < cert.notBefore) throw new FleetgateError('CERT_NOT_YET_VALID', `certificate ${identity.serial} is not valid before ${new Date(cert.notBefore).toISOString()}`, { detail });
    if (now >= cert.notAfter) throw new FleetgateError('CERT_EXPIRED', `certificate ${identity.serial} expired at ${new Date(cert.notAfter).toISOString()}`, { detail });
    const device = reader.getDevice(identity.deviceId);
    if (device === undefined) throw new FleetgateError('CERT_UNKNOWN', `device ${identity.deviceId} is not in the registry`, { detail });
    if (device.status === 'suspended') throw new FleetgateError('DEVICE_SUSPENDED', `device ${device.id} is suspended`, { detail });
    if (device.status === 'revoked') throw new FleetgateError('DEVICE_REVOKED', `device ${device.id} is revoked`, { detail });
    const denied = reader.findDenied({ fingerprint: identity.fingerprint, spki: identity.spkiSha256, deviceId: device.id, now });
    if (denied !== undefined) throw new FleetgateError('DENYLISTED', `${denied.kind} ${denied.value} is denylisted${denied.reason ? `: ${denied.reason}` : ''}`, { detail: { ...detail, denied: denied.kind } });
    return { device, identity };
  }

  close(): void {
    this.#drop();
  }
}
