import type { Command } from 'commander';
import { assertDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import type { SessionInfo } from '../../gateway/sessions.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { adminRequest } from '../operator.ts';
import { emit, table } from '../output.ts';

export function registerConnections(program: Command, common: CommonFlags): void {
  common(program.command('connections'))
    .description('list live sessions on the running gateway (admin API, operator certificate)')
    .option('--device <id>', 'only this device')
    .option('--admin <url>', 'admin API URL (default from config: https://127.0.0.1:9444)')
    .action(async (opts: CommonOptions & { device?: string; admin?: string }) => {
      await withContext(opts, async (ctx) => {
        const { connections, nodes } = (await adminRequest(ctx, 'GET', '/v1/connections', opts.admin)) as {
          connections: (SessionInfo & { node?: string })[];
          nodes?: string[];
        };
        const rows = opts.device === undefined ? connections : connections.filter((c) => c.deviceId === opts.device);
        // In a cluster every node that answered is listed, and each row says where the session is.
        emit(opts, rows, () =>
          nodes === undefined
            ? table(
                ['DEVICE', 'TYPE', 'TRANSPORT', 'SINCE', 'REMOTE', 'SERIAL'],
                rows.map((c) => [c.deviceId, c.type, c.transport, c.since, c.remoteAddress, c.serial]),
              )
            : `${table(
                ['DEVICE', 'NODE', 'TYPE', 'TRANSPORT', 'SINCE', 'REMOTE', 'SERIAL'],
                rows.map((c) => [c.deviceId, c.node ?? '-', c.type, c.transport, c.since, c.remoteAddress, c.serial]),
              )}\nnodes that answered: ${nodes.join(', ')}`,
        );
      });
    });

  common(program.command('kick <id>'))
    .description('close every live session of a device now (it may reconnect unless suspended or revoked)')
    .option('--admin <url>', 'admin API URL')
    .action(async (id: string, opts: CommonOptions & { admin?: string }) => {
      await withContext(opts, async (ctx) => {
        const result = (await adminRequest(
          ctx,
          'DELETE',
          `/v1/connections/${encodeURIComponent(assertDeviceId(id))}`,
          opts.admin,
        )) as { closed: number; nodes?: { node: string; closed: number }[] };
        emit(
          opts,
          result,
          () =>
            `closed ${result.closed} session(s) of ${id}${result.nodes === undefined ? '' : ` (${result.nodes.map((n) => `${n.node}: ${n.closed}`).join(', ')})`}`,
        );
      });
    });
}
