#!/usr/bin/env node
// fleetgate-device: the device-side CLI built on firmware-sdk (enroll, renew, pub/sub, request).
// The SDK has not landed yet; say so plainly instead of pretending.
process.stderr.write('fleetgate-device: not available in this build yet (it arrives with the firmware-sdk).\n'
  + 'Meanwhile: make a key and CSR with `openssl req`, and have an operator sign it with `fleetgate cert issue`.\n');
process.exitCode = 2;
