import { assertDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import type { Authorized } from './method.ts';

/** Operator-side signing (`fleetgate cert issue`, factory batches): the operator names the device. */
export function authorizeOperator(registry: RegistryWriter, deviceId: string): Authorized {
  const id = assertDeviceId(deviceId);
  registry.assertDeviceMayEnroll(id);
  return { deviceId: id, method: 'operator', record: (r, cert, actor) => r.recordCertificate(cert, actor) };
}
