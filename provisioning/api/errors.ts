import type { FastifyError } from 'fastify';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';

/** fastify's own errors (body limit, media type, schema) mapped into the catalogue. */
export function httpError(err: unknown): FleetgateError {
  if (err instanceof FleetgateError) return err;
  const e = err as FastifyError & { validation?: unknown };
  if (e.validation !== undefined) return new FleetgateError('BAD_REQUEST', e.message);
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return new FleetgateError('PAYLOAD_TOO_LARGE', e.message);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new FleetgateError('UNSUPPORTED_MEDIA_TYPE', e.message);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new FleetgateError('BAD_REQUEST', e.message);
    default:
      if (e.statusCode === 413) return new FleetgateError('PAYLOAD_TOO_LARGE', e.message);
      if (e.statusCode === 415) return new FleetgateError('UNSUPPORTED_MEDIA_TYPE', e.message);
      if (e.statusCode === 400) return new FleetgateError('BAD_REQUEST', e.message);
      if (e.statusCode === 404) return new FleetgateError('ROUTE_NOT_FOUND', e.message);
      return toFleetgateError(err);
  }
}
