import type { Command } from 'commander';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { parseRevocationReason, revocationReasonName } from '../../provisioning/registry/reasons.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso, note, table } from '../output.ts';
import { parseDurationOption, readInput } from '../parse.ts';

function parseMetadata(value: string): Record<string, unknown> {
  const parsed: unknown = JSON.parse(value);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new Error('--metadata must be a JSON object');
  return parsed as Record<string, unknown>;
}

function deviceLine(d: DeviceRecord): string {
  return `${d.id}  type=${d.type} fleet=${d.fleet} status=${d.status}${d.parent === null ? '' : ` parent=${d.parent}`}`;
}

export function registerDevice(program: Command, common: CommonFlags): void {
  const device = program.command('device').description('devices of the fleet');
  deviceAddCommand(device, common);
  deviceImportCommand(device, common);
  deviceTokenCommand(device, common);
  deviceListCommand(device, common);
  deviceShowCommand(device, common);
  deviceSuspendCommand(device, common);
  deviceResumeCommand(device, common);
  deviceRevokeCommand(device, common);
}

/** `fleetgate device add`. */
function deviceAddCommand(device: Command, common: CommonFlags): void {
  common(device.command('add <id>'))
    .description('add a device and print its one-time enrollment token (shown only once)')
    // Checked in the action, not by commander: commander reports a missing mandatory option before a
    // missing argument, so `device add` alone would complain about --type rather than the id.
    .option('--type <type>', 'sensor | gateway | camera | service | operator (required)')
    .option('--fleet <fleet>', 'fleet name', 'default')
    .option('--parent <id>', 'the gateway device this one sits behind')
    .option('--metadata <json>', 'free-form JSON object', parseMetadata)
    .option(
      '--token-ttl <duration>',
      'enrollment token lifetime (e.g. 24h, 7d); default from config',
      parseDurationOption('--token-ttl'),
    )
    .option('--no-token', 'do not create an enrollment token')
    .action(
      async (
        id: string,
        opts: CommonOptions & {
          type?: string;
          fleet: string;
          parent?: string;
          metadata?: Record<string, unknown>;
          tokenTtl?: number;
          token: boolean;
        },
      ) => {
        const type = opts.type;
        if (type === undefined)
          throw new FleetgateError(
            'USAGE',
            'device add needs --type <type> (sensor | gateway | camera | service | operator)',
          );
        await withContext(opts, (ctx) => {
          const { device: d, token } = ctx.registry().addDevice(
            {
              id,
              type,
              fleet: opts.fleet,
              parent: opts.parent ?? null,
              ...(opts.metadata !== undefined && { metadata: opts.metadata }),
            },
            ctx.actor,
            opts.token ? { tokenTtlMs: opts.tokenTtl ?? ctx.config.enrollment.tokenTtlMs } : {},
          );
          emit(opts, { device: d, ...(token && { token: token.token, tokenExpiresAt: iso(token.expiresAt) }) }, () => {
            if (token === undefined) return deviceLine(d);
            note(
              `device ${d.id} added; its enrollment token (shown once, expires ${iso(token.expiresAt)}) is on stdout`,
            );
            return token.token;
          });
        });
      },
    );
}

/** `fleetgate device import`. */
function deviceImportCommand(device: Command, common: CommonFlags): void {
  common(device.command('import'))
    .description(
      'add many devices at once: JSON lines {"id","type","fleet"?,"parent"?,"token"?: true} in; one JSON line per device out (with its token when asked). Existing devices are kept (a token is still issued if asked).',
    )
    .requiredOption('--in <file>', 'JSON lines; - for standard input')
    .option('--token-ttl <duration>', 'lifetime of the tokens issued', parseDurationOption('--token-ttl'))
    .action(async (opts: CommonOptions & { in: string; tokenTtl?: number }) => {
      await withContext(opts, async (ctx) => {
        const registry = ctx.registry();
        const text = (await readInput(opts.in)).toString('utf8');
        const ttl = opts.tokenTtl ?? ctx.config.enrollment.tokenTtlMs;
        let failed = 0;
        for (const [i, line] of text.split('\n').entries()) {
          if (line.trim() === '') continue;
          let id: unknown;
          try {
            const item = JSON.parse(line) as {
              id: string;
              type: string;
              fleet?: string;
              parent?: string;
              token?: boolean;
            };
            id = item.id;
            const existing = registry.getDevice(item.id);
            if (existing !== undefined && existing.type !== item.type)
              throw new FleetgateError('DEVICE_EXISTS', `device ${item.id} exists as a ${existing.type}`);
            let token: string | undefined;
            if (existing === undefined) {
              token = registry.addDevice(
                { id: item.id, type: item.type, fleet: item.fleet ?? 'default', parent: item.parent ?? null },
                ctx.actor,
                item.token === true ? { tokenTtlMs: ttl } : {},
              ).token?.token;
            } else if (item.token === true) {
              token = registry.createToken(item.id, ttl, ctx.actor).token;
            }
            process.stdout.write(
              `${JSON.stringify({ id: item.id, created: existing === undefined, ...(token !== undefined && { token }) })}\n`,
            );
          } catch (err) {
            failed++;
            const e = toFleetgateError(err);
            process.stdout.write(
              `${JSON.stringify({ line: i + 1, ...(typeof id === 'string' && { id }), error: { code: e.code, message: e.message } })}\n`,
            );
          }
        }
        if (failed > 0) throw new FleetgateError('BAD_REQUEST', `${failed} line(s) failed (see their output)`);
      });
    });
}

/** `fleetgate device token`. */
function deviceTokenCommand(device: Command, common: CommonFlags): void {
  common(device.command('token <id>'))
    .description('issue a new one-time enrollment token for an existing device')
    .option('--token-ttl <duration>', 'token lifetime (e.g. 24h)', parseDurationOption('--token-ttl'))
    .action(async (id: string, opts: CommonOptions & { tokenTtl?: number }) => {
      await withContext(opts, (ctx) => {
        const token = ctx.registry().createToken(id, opts.tokenTtl ?? ctx.config.enrollment.tokenTtlMs, ctx.actor);
        emit(opts, { deviceId: id, token: token.token, tokenExpiresAt: iso(token.expiresAt) }, () => token.token);
      });
    });
}

/** `fleetgate device list`. */
function deviceListCommand(device: Command, common: CommonFlags): void {
  common(device.command('list'))
    .description('list devices')
    .option('--fleet <fleet>', 'only this fleet')
    .action(async (opts: CommonOptions & { fleet?: string }) => {
      await withContext(opts, (ctx) => {
        const rows = ctx.registry().listDevices(opts.fleet === undefined ? {} : { fleet: opts.fleet });
        emit(opts, rows, () =>
          table(
            ['ID', 'TYPE', 'FLEET', 'STATUS', 'PARENT', 'CREATED'],
            rows.map((d) => [d.id, d.type, d.fleet, d.status, d.parent ?? '-', iso(d.createdAt)]),
          ),
        );
      });
    });
}

/** `fleetgate device show`. */
function deviceShowCommand(device: Command, common: CommonFlags): void {
  common(device.command('show <id>'))
    .description('one device with its certificates')
    .action(async (id: string, opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const registry = ctx.registry();
        const d = requireDevice(registry.getDevice(id), id);
        const certificates = registry.listCertificates({ deviceId: d.id }).map(({ pem: _pem, ...c }) => c);
        const children = registry.listChildren(d.id).map((c) => c.id);
        emit(opts, { ...d, children, certificates }, () =>
          [
            deviceLine(d),
            `created ${iso(d.createdAt)}, updated ${iso(d.updatedAt)}`,
            ...(children.length > 0 ? [`children: ${children.join(', ')}`] : []),
            `metadata: ${JSON.stringify(d.metadata)}`,
            'certificates:',
            table(
              ['SERIAL', 'NOT AFTER', 'STATUS'],
              certificates.map((c) => [
                c.serial,
                iso(c.notAfter),
                c.revocation === null
                  ? c.notAfter < Date.now()
                    ? 'expired'
                    : 'valid'
                  : `revoked (${revocationReasonName(c.revocation.reason)})`,
              ]),
            ),
          ].join('\n'),
        );
      });
    });
}

/** `fleetgate device suspend`. */
function deviceSuspendCommand(device: Command, common: CommonFlags): void {
  common(device.command('suspend <id>'))
    .description('suspend a device (reversible): its connections are refused until resumed')
    .option('--reason <text>', 'why (goes to the audit log)')
    .action(async (id: string, opts: CommonOptions & { reason?: string }) => {
      await withContext(opts, (ctx) => {
        const { device: d, changed } = ctx.registry().suspendDevice(id, ctx.actor, opts.reason);
        emit(opts, { device: d, changed }, () => (changed ? `suspended ${d.id}` : `${d.id} was already suspended`));
      });
    });
}

/** `fleetgate device resume`. */
function deviceResumeCommand(device: Command, common: CommonFlags): void {
  common(device.command('resume <id>'))
    .description('resume a suspended device')
    .action(async (id: string, opts: CommonOptions) => {
      await withContext(opts, (ctx) => {
        const { device: d, changed } = ctx.registry().resumeDevice(id, ctx.actor);
        emit(opts, { device: d, changed }, () =>
          changed ? `resumed ${d.id} (status ${d.status})` : `${d.id} was not suspended (status ${d.status})`,
        );
      });
    });
}

/** `fleetgate device revoke`. */
function deviceRevokeCommand(device: Command, common: CommonFlags): void {
  common(device.command('revoke <id>'))
    .description('revoke a device permanently: all its certificates are revoked')
    .option('--reason <reason>', 'RFC 5280 reason: keyCompromise, cessationOfOperation, …', 'cessationOfOperation')
    .action(async (id: string, opts: CommonOptions & { reason: string }) => {
      await withContext(opts, (ctx) => {
        const reason = parseRevocationReason(opts.reason);
        const result = ctx.registry().revokeDevice(id, reason, ctx.actor);
        emit(opts, { ...result, reason: revocationReasonName(reason) }, () =>
          result.changed
            ? `revoked ${id} (${revocationReasonName(reason)}); certificates revoked: ${result.revokedSerials.join(', ') || 'none'}`
            : `${id} was already revoked`,
        );
      });
    });
}

function requireDevice(d: DeviceRecord | undefined, id: string): DeviceRecord {
  if (d !== undefined) return d;
  throw new FleetgateError('DEVICE_NOT_FOUND', `device ${id} not found`);
}
