import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { registerAudit } from './commands/audit.ts';
import { registerCa } from './commands/ca.ts';
import { registerCert } from './commands/cert.ts';
import { registerClaim } from './commands/claim.ts';
import { registerCluster } from './commands/cluster.ts';
import { registerConnections } from './commands/connections.ts';
import { registerCrl } from './commands/crl.ts';
import { registerDeny } from './commands/deny.ts';
import { registerDevice } from './commands/device.ts';
import { registerInit } from './commands/init.ts';
import { registerJwt } from './commands/jwt.ts';
import { registerNode } from './commands/node.ts';
import { registerOperator } from './commands/operator.ts';
import { registerUp } from './commands/up.ts';
import { common } from './flags.ts';
import { reportError } from './output.ts';

/** `fleetgate 0.1.0 (Node.js v24.21.0, OpenSSL 3.5.8)`: what runs, since the pinned Node is part of the product. */
function versionLine(): string {
  const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string };
  return `fleetgate ${pkg.version} (Node.js ${process.version}, OpenSSL ${process.versions.openssl})`;
}

export function buildProgram(): Command {
  const program = new Command('fleetgate')
    .description('mTLS gateway for IoT device fleets: operator CLI')
    .version(versionLine(), '-V, --version', 'the fleetgate version, and the Node.js and OpenSSL it runs on')
    .showSuggestionAfterError(true)
    .exitOverride();
  registerInit(program, common);
  registerUp(program, common);
  registerCa(program, common);
  registerDevice(program, common);
  registerCert(program, common);
  registerDeny(program, common);
  registerCrl(program, common);
  registerAudit(program, common);
  registerConnections(program, common);
  registerClaim(program, common);
  registerJwt(program, common);
  registerOperator(program, common);
  registerNode(program, common);
  registerCluster(program, common);
  // Commander prints its own usage errors; keep them to one line and exit 2.
  const quiet = (cmd: Command): void => {
    cmd.exitOverride().configureOutput({ outputError: () => undefined });
    cmd.commands.forEach(quiet);
  };
  quiet(program);
  return program;
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const json = argv.includes('--json');
  try {
    await buildProgram().parseAsync(argv as string[], { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      if (err.code === 'commander.help') return 0;
      return reportError(new FleetgateError('USAGE', err.message.replace(/^error: /, '')), json);
    }
    return reportError(err, json);
  }
}
