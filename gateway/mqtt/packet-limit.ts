import { Duplex } from 'node:stream';

/**
 * Reads MQTT fixed headers as bytes arrive and reports a packet whose remaining length
 * exceeds the limit **before** its body is buffered (aedes enforces no maximum packet size).
 * [MQTT-2.2.3]: remaining length is a varint of at most 4 bytes.
 */
export class PacketScanner {
  readonly #max: number;
  #state: 'header' | 'length' | 'body' = 'header';
  #length = 0;
  #multiplier = 1;
  #lengthBytes = 0;
  #remaining = 0;

  constructor(maxPacketBytes: number) {
    this.#max = maxPacketBytes;
  }

  /** Returns an error message when the stream must be cut, else undefined. */
  feed(chunk: Uint8Array): string | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.#state === 'body') {
        const take = Math.min(this.#remaining, chunk.length - i);
        this.#remaining -= take;
        i += take;
        if (this.#remaining === 0) this.#state = 'header';
      } else if (this.#state === 'header') {
        i++;
        this.#state = 'length';
        this.#length = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
      } else {
        const b = chunk[i++] as number;
        this.#length += (b & 0x7f) * this.#multiplier;
        this.#multiplier *= 128;
        this.#lengthBytes++;
        if ((b & 0x80) !== 0) {
          if (this.#lengthBytes === 4) return 'malformed remaining length';
          continue;
        }
        if (this.#length > this.#max) return `packet of ${this.#length} bytes exceeds the limit of ${this.#max}`;
        this.#remaining = this.#length;
        this.#state = this.#remaining === 0 ? 'header' : 'body';
      }
    }
    return undefined;
  }
}

/**
 * The stream aedes reads: bytes from the transport pass through a {@link PacketScanner};
 * writes go straight to the transport. An oversized packet destroys the connection.
 */
export class LimitedStream extends Duplex {
  readonly #inner: Duplex;
  #scanner: PacketScanner;
  readonly #onViolation: (reason: string) => void;

  constructor(inner: Duplex, maxPacketBytes: number, onViolation: (reason: string) => void) {
    super({ allowHalfOpen: false });
    this.#inner = inner;
    this.#scanner = new PacketScanner(maxPacketBytes);
    this.#onViolation = onViolation;
    inner.on('data', (chunk: Buffer) => this.#onData(chunk));
    inner.on('end', () => this.push(null));
    inner.on('error', (err) => this.destroy(err));
    inner.on('close', () => this.destroy());
    inner.on('drain', () => this.emit('drain'));
  }

  /** Changes the limit once the device type is known (before any byte is read). */
  setLimit(maxPacketBytes: number): void {
    this.#scanner = new PacketScanner(maxPacketBytes);
  }

  #onData(chunk: Buffer): void {
    const violation = this.#scanner.feed(chunk);
    if (violation !== undefined) {
      this.#inner.pause();
      this.#onViolation(violation);
      this.destroy();
      return;
    }
    if (!this.push(chunk)) this.#inner.pause();
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.#inner.write(chunk)) cb();
    else this.#inner.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#inner.end(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#inner.destroy();
    cb(err);
  }
}
