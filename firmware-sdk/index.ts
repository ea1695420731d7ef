/**
 * fleetgate firmware SDK: what a device's software uses to enroll, connect over mTLS, renew
 * and recover. It imports no server code. The wire contract (error codes, device id rules,
 * certificate identity) is in `./protocol/`.
 */
export { Backoff } from './backoff.ts';
export { Device, type DeviceOptions } from './device.ts';
export {
  certsFromPkcs7,
  type EnrollOptions,
  enrollWithClaim,
  enrollWithToken,
  estCacerts,
  estSimpleEnroll,
  estSimpleReenroll,
  renew,
} from './enroll.ts';
export { type HttpResponse, httpsRequest, type TlsMaterial, tlsAgent } from './http.ts';
export {
  createCsr,
  type DeviceIdentity,
  generateKey,
  identityFiles,
  type KeyType,
  loadIdentity,
  saveIdentity,
} from './identity.ts';
export { ERRORS, type ErrorCode, FleetgateError, isErrorCode } from './protocol/errors.ts';
