import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from 'commander';
import { parseDuration } from '../config/duration.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';

/** Commander argument parsers: a bad value is a usage error (exit 2) naming the option. */
export function parseNonNegativeInt(flag: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)))
      throw new InvalidArgumentError(`${flag} must be a non-negative integer`);
    return Number(value);
  };
}

export function parsePositiveInt(flag: string) {
  return (value: string): number => {
    const n = parseNonNegativeInt(flag)(value);
    if (n === 0) throw new InvalidArgumentError(`${flag} must be at least 1`);
    return n;
  };
}

export function parseDurationOption(flag: string) {
  return (value: string): number => {
    try {
      return parseDuration(value, flag);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

/**
 * A file's contents, or standard input's for `-`. Standard input is read as a stream: a pipe
 * from another process may be non-blocking, where a synchronous read fails with EAGAIN. A file
 * that cannot be read is a usage error naming it.
 */
export async function readInput(file: string): Promise<Buffer> {
  try {
    if (file !== '-') return await readFile(file);
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  } catch (err) {
    throw new FleetgateError(
      'USAGE',
      `cannot read ${file === '-' ? 'standard input' : file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}
