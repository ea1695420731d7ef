// Benchmarks flood from a handful of sensors, far past what a device type's quotas allow (500
// messages a second for a sensor): the gateways they start keep quotas on — every message is
// still checked, so its cost is in the figures — with limits no benchmark reaches. Imported
// first by every benchmark; an explicit FLEETGATE_LIMITS wins.
const BIG = 1_000_000_000;
const unmetered = {
  messagesPerSecond: BIG,
  bytesPerSecond: BIG * 1_000,
  requestsPerSecond: BIG,
  connectsPerMinute: BIG,
  maxSubscriptions: BIG,
};
process.env.FLEETGATE_LIMITS ??= JSON.stringify(
  Object.fromEntries(['sensor', 'gateway', 'camera', 'service', 'operator'].map((t) => [t, unmetered])),
);
