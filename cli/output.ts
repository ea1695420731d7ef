import { debugEnabled } from '../config/config.ts';
import { ERRORS, toFleetgateError } from '../firmware-sdk/protocol/errors.ts';

export interface OutputOptions {
  json?: boolean;
}

/** Prints data: JSON (one document) with `--json`, else the human rendering. */
export function emit(options: OutputOptions, data: unknown, human: () => string): void {
  const text = options.json === true ? JSON.stringify(data, null, 2) : human();
  if (text.length > 0) process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** A note for the operator on stderr (never mixed into data on stdout). */
export function note(message: string): void {
  process.stderr.write(`fleetgate: ${message}\n`);
}

/**
 * The CLI surface of the error model: one line on stderr (a JSON object with `--json`),
 * and the code's exit status. Uncoded errors become INTERNAL.
 */
export function reportError(err: unknown, json: boolean): number {
  const e = toFleetgateError(err);
  if (json) {
    process.stderr.write(`${JSON.stringify({ error: { code: e.code, message: e.message } })}\n`);
  } else {
    process.stderr.write(`fleetgate: ${e.code}: ${e.message}\n`);
    if (e.code === 'INTERNAL' && debugEnabled() && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  }
  return ERRORS[e.code].exit;
}

export function iso(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A plain aligned table: header row, then rows; empty → "(none)". */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '(none)';
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) =>
    r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}
