#!/usr/bin/env -S node --max-semi-space-size=2
// fleetgate: the operator CLI. Runs on the project's pinned Node 24 (`npx fleetgate`, `npm start`).
// --max-semi-space-size=2 (MB): V8 collects the young generation often enough that buffers a
// proxied stream leaves behind are freed promptly (a 50 MB upload: +55 MB RSS at V8's default,
// under 30 MB with this). Servers started another way should pass the same flag (SERVER_NODE_FLAGS).
import { main } from '../cli/main.ts';

process.exitCode = await main(process.argv.slice(2));
