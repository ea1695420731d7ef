import type { FastifyError, FastifyReply } from 'fastify';
import { FleetgateError, toFleetgateError } from '../firmware-sdk/protocol/errors.ts';

/**
 * What a remote party hears, on every HTTP surface (HTTPS plane, admin, provisioning JSON and
 * EST): the catalogue's code and its short public message, never the internal message (an
 * operator's denylist reason, a device id, a serial, a stack). The full error goes to the log
 * (`logFields`). fastify's own errors (body limit, media type, schema) are mapped into the
 * catalogue first.
 */
export function publicBody(e: FleetgateError): { error: { code: string; message: string } } {
  return { error: { code: e.code, message: e.publicMessage } };
}

/** fastify's `frameworkErrors` hook (a URL it cannot route): answered like every other refusal. */
export function frameworkError(err: unknown, _req: unknown, reply: FastifyReply): void {
  void sendError(reply, httpError(err));
}

/** The JSON error answer of every HTTP surface except EST; a refusal worth retrying says when (`Retry-After`). */
export function sendError(reply: FastifyReply, e: FleetgateError): FastifyReply {
  const retry = retryAfterSeconds(e);
  if (retry !== undefined) void reply.header('retry-after', String(retry));
  return reply.status(e.httpStatus).type('application/json; charset=utf-8').send(publicBody(e));
}

/** Seconds a client should wait before retrying (RFC 9110 §10.2.3): a busy registry, a rate limit. */
export function retryAfterSeconds(e: FleetgateError): number | undefined {
  const given = e.detail.retryAfterS;
  if (typeof given === 'number' && Number.isFinite(given)) return Math.max(1, Math.ceil(given));
  return e.code === 'REGISTRY_UNAVAILABLE' ? 1 : undefined;
}

/** The log side of a refusal: code, internal message, structured detail. */
export function logFields(e: FleetgateError): Record<string, unknown> {
  return { code: e.code, reason: e.message, ...e.detail };
}

/** fastify's own errors (body limit, media type, schema, bad URL) mapped into the catalogue. */
export function httpError(err: unknown): FleetgateError {
  if (err instanceof FleetgateError) return err;
  const e = err as FastifyError & { validation?: unknown };
  if (e.validation !== undefined) return new FleetgateError('BAD_REQUEST', e.message);
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new FleetgateError('PAYLOAD_TOO_LARGE', e.message);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new FleetgateError('UNSUPPORTED_MEDIA_TYPE', e.message);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new FleetgateError('BAD_REQUEST', e.message);
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new FleetgateError('PATH_INVALID', e.message);
    default:
      if (e.statusCode === 413) return new FleetgateError('PAYLOAD_TOO_LARGE', e.message);
      if (e.statusCode === 415) return new FleetgateError('UNSUPPORTED_MEDIA_TYPE', e.message);
      if (e.statusCode === 400) return new FleetgateError('BAD_REQUEST', e.message);
      if (e.statusCode === 404) return new FleetgateError('ROUTE_NOT_FOUND', e.message);
      return toFleetgateError(err);
  }
}
