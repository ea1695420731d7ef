import { MalformedPacket, TooLarge } from './packets.ts';

/**
 * Incremental framing from the fixed header. `push` takes bytes as they arrive and calls
 * `onPacket(firstByte, body)` for each whole packet; a remaining length over `limit()` or a
 * malformed length throws before anything more is buffered.
 */
export class Framer {
  readonly #limit: () => number;
  readonly #onPacket: (first: number, body: Buffer) => void;
  /** Bytes of an unfinished packet, kept as received (joined once, when the packet is whole). */
  #chunks: Buffer[] = [];
  #length = 0;
  /** Bytes the unfinished packet needs in total (-1: its fixed header is not whole yet). */
  #need = -1;

  constructor(limit: () => number, onPacket: (first: number, body: Buffer) => void) {
    this.#limit = limit;
    this.#onPacket = onPacket;
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    if (this.#need === -1 || this.#length >= this.#need) this.#drain();
  }

  #drain(): void {
    const buf = this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks, this.#length);
    this.#chunks = [];
    this.#length = 0;
    this.#need = -1;
    let offset = 0;
    while (offset < buf.length) {
      const header = readFixedHeader(buf, offset);
      if (header === undefined) break; // length bytes not all here yet
      if (header.remaining > this.#limit()) {
        throw new TooLarge(
          `packet of ${header.remaining} bytes exceeds the limit of ${this.#limit()}`,
          buf.subarray(offset, Math.min(buf.length, header.bodyStart + 7)),
        );
      }
      const end = header.bodyStart + header.remaining;
      if (end > buf.length) {
        this.#need = end - offset;
        break;
      }
      this.#onPacket(buf[offset] as number, buf.subarray(header.bodyStart, end));
      offset = end;
    }
    if (offset < buf.length) {
      const rest = buf.subarray(offset);
      this.#chunks = [rest];
      this.#length = rest.length;
    }
  }
}

function readFixedHeader(buf: Buffer, offset: number): { remaining: number; bodyStart: number } | undefined {
  let remaining = 0;
  let multiplier = 1;
  for (let i = 1; i <= 4; i++) {
    if (offset + i >= buf.length) return undefined;
    const b = buf[offset + i] as number;
    remaining += (b & 0x7f) * multiplier;
    if ((b & 0x80) === 0) {
      if (i > 1 && b === 0) throw new MalformedPacket('MQTT-1.5.5-1', 'remaining length not minimally encoded');
      return { remaining, bodyStart: offset + i + 1 };
    }
    multiplier *= 128;
  }
  throw new MalformedPacket('MQTT-2.2.3', 'remaining length longer than 4 bytes');
}
