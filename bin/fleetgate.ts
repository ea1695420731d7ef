#!/usr/bin/env node
// fleetgate: the operator CLI. Runs on the project's pinned Node 24 (`npx fleetgate`, `npm start`).
import { main } from '../cli/main.ts';

process.exitCode = await main(process.argv.slice(2));
