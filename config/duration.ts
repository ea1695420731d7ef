import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000,
};

/**
 * Parses a human duration such as `90s`, `30m`, `24h`, `30d`, `1h30m` into milliseconds.
 * A bare number is refused: `30` could mean seconds or days, and guessing is how
 * certificates end up living a thousand times too long.
 */
export function parseDuration(input: string, what = 'duration'): number {
  const text = String(input).trim();
  const re = /(\d+)(ms|s|m|h|d|w|y)/gy;
  let total = 0;
  let consumed = 0;
  for (let match = re.exec(text); match !== null; match = re.exec(text)) {
    total += Number(match[1]) * (UNITS[match[2] as string] as number);
    consumed = re.lastIndex;
  }
  if (text.length === 0 || consumed !== text.length || total <= 0 || !Number.isSafeInteger(total)) {
    throw new FleetgateError(
      'USAGE',
      `${what} ${JSON.stringify(input)} is invalid: a positive number with a unit (ms, s, m, h, d, w, y), e.g. 24h or 30d`,
    );
  }
  return total;
}

/** The shortest exact rendering: 86400000 → `1d`, 5400000 → `1h30m`. */
export function formatDuration(ms: number): string {
  let rest = ms;
  let out = '';
  for (const unit of ['y', 'd', 'h', 'm', 's', 'ms']) {
    const size = UNITS[unit] as number;
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out || '0s';
}
