#!/usr/bin/env node
// device-sim: simulated fleets for load and correctness runs (see device-sim/README.md).
import { main } from '../device-sim/main.ts';

process.exitCode = await main(process.argv.slice(2));
process.exit();
