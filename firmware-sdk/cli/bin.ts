#!/usr/bin/env node
// fleetgate-device: the device-side CLI on firmware-sdk (enroll, renew, pub, sub, request, status).
import { main } from './main.ts';

process.exitCode = await main(process.argv.slice(2));
