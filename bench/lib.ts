// Shared by the benchmark scripts: a gateway in its own process (so its CPU can be measured),
// a fleet of enrolled devices, and small statistics helpers. Loopback only; bounded loops.
export { benchFleet, freePort, spawnGateway, spawnService, untilTlsListening, type GatewayProcess } from '../harness/services.ts';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export function fmt(n: number, digits = 1): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
