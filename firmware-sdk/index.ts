/**
 * fleetgate firmware SDK: what a device's software uses to enroll, connect over mTLS, renew
 * and recover. It imports no server code. The wire contract (error codes, device id rules,
 * certificate identity) is in `./protocol/`.
 */
export { Backoff } from './backoff.ts';
export { Device, type DeviceOptions } from './device.ts';
export {
  certsFromPkcs7,
  enrollWithClaim,
  enrollWithToken,
  estCacerts,
  estSimpleEnroll,
  estSimpleReenroll,
  renew,
  type EnrollOptions,
} from './enroll.ts';
export { httpsRequest, tlsAgent, type HttpResponse, type TlsMaterial } from './http.ts';
export {
  createCsr,
  generateKey,
  identityFiles,
  loadIdentity,
  saveIdentity,
  type DeviceIdentity,
  type KeyType,
} from './identity.ts';
export { ERRORS, FleetgateError, isErrorCode, type ErrorCode } from './protocol/errors.ts';
