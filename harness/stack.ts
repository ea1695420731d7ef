import { type GatewayProcess, spawnService } from './services.ts';

export type Stack = GatewayProcess;

/** `fleetgate up` in its own process on ephemeral loopback ports (or the ports `env` names). */
export function startStack(dataDir: string, env: NodeJS.ProcessEnv = {}): Promise<Stack> {
  return spawnService('up', dataDir, { FLEETGATE_LOG_LEVEL: 'warn', ...env });
}
