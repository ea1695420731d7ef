/** Markup that is already safe: produced by {@link html}, never from a caller's string. */
export class Html {
  readonly value: string;
  constructor(value: string) {
    this.value = value;
  }
  toString(): string {
    return this.value;
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

function piece(value: unknown): string {
  if (value instanceof Html) return value.value;
  if (value === undefined || value === null || value === false) return '';
  if (Array.isArray(value)) return value.map(piece).join('');
  return escapeHtml(String(value));
}

/**
 * The console's one way to make markup: every interpolated value is escaped unless it is
 * itself {@link Html} (a nested template), arrays are joined, null/undefined/false are nothing.
 * Registry values (device ids, metadata, audit details, reasons) are operator- or device-chosen
 * text and are never trusted as markup.
 */
export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + strings[i + 1]!;
  return new Html(out);
}
