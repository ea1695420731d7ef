import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import {
  isNodeRole,
  issueNodeCert,
  NODE_ROLES,
  type NodeRole,
  nodeDistinguishedName,
  nodeIdentityOf,
  nodeKeyAndCsr,
} from '../../provisioning/ca/node.ts';
import { loadNodeIdentity } from '../../runtime/cluster-links.ts';
import { writeNewFile } from '../../runtime/files.ts';
import { type CliContext, type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit, iso } from '../output.ts';
import { parsePositiveInt, readInput } from '../parse.ts';

const DAY = 86_400_000;
const KEY_MODE = 0o600;
const CERT_MODE = 0o644;

interface IssueOptions extends CommonOptions {
  role: string;
  host?: string[];
  csr?: string;
  out?: string;
  outDir?: string;
  days: number;
  replace?: boolean;
}

function role(value: string): NodeRole {
  if (!isNodeRole(value))
    throw new FleetgateError('NODE_CERT_INVALID', `--role must be one of ${NODE_ROLES.join(', ')} (got ${value})`);
  return value;
}

/**
 * Writes `files` (name → content, mode): new files, or with `replace` each over the old one by
 * rename (key first), so a node picks up a rotated identity on restart.
 */
function writeAll(files: [string, string, number][], replace: boolean): void {
  for (const [file] of files)
    if (existsSync(file) && !replace)
      throw new FleetgateError(
        'NODE_CERT_EXISTS',
        `${file} exists: --replace rotates it (the old certificate stays valid until it expires)`,
      );
  for (const [file, content, mode] of files) {
    const fresh = `${file}.new`;
    if (existsSync(fresh)) renameSync(fresh, `${fresh}.stale`);
    writeNewFile(fresh, content, mode);
    renameSync(fresh, file);
  }
}

export function registerNode(program: Command, common: CommonFlags): void {
  const node = program
    .command('node')
    .description("cluster members' certificates (NATS and PostgreSQL links): issue, request, install, show");
  nodeIssueCommand(node, common);
  nodeRequestCommand(node, common);
  nodeInstallCommand(node, common);
  nodeShowCommand(node, common);
}

/** `fleetgate node issue`: on the CA's host. */
function nodeIssueCommand(node: Command, common: CommonFlags): void {
  common(node.command('issue <name>'))
    .description(
      "sign a node certificate with the fleet CA: gateway/provisioning/operator (client, NATS and PostgreSQL) or server (NATS's or PostgreSQL's own). With --csr the key stays where the CSR was made; without, the key is made here and written to this data directory's node/ (or --out-dir)",
    )
    .requiredOption('--role <role>', NODE_ROLES.join(', '))
    .option(
      '--host <name>',
      'server role: a DNS name or IP address clients use (repeatable)',
      (v, a: string[] = []) => [...a, v],
    )
    .option('--csr <file>', 'a PKCS#10 request made on the node (fleetgate node request); - for standard input')
    .option('--out <file>', 'with --csr: write the certificate chain to this new file instead of standard output')
    .option('--out-dir <dir>', 'without --csr: write <name>.crt and <name>.key here instead of the data directory')
    .option(
      '--days <n>',
      'validity in days (default 90: rotate with --replace before it ends)',
      parsePositiveInt('--days'),
      90,
    )
    .option('--replace', 'replace an existing node certificate and key (rotation)')
    .action(async (name: string, opts: IssueOptions) => {
      await withContext(opts, async (ctx) => issueNode(ctx, name, opts));
    });
}

async function issueNode(ctx: CliContext, name: string, opts: IssueOptions): Promise<void> {
  const r = role(opts.role);
  if (opts.host !== undefined && r !== 'server')
    throw new FleetgateError('NODE_CERT_INVALID', '--host names a server certificate only (--role server)');
  const csrPem = opts.csr === undefined ? undefined : (await readInput(opts.csr)).toString('utf8');
  const issued = await issueNodeCert(await ctx.ca(), {
    role: r,
    name,
    validityMs: opts.days * DAY,
    ...(opts.host !== undefined && { hosts: opts.host }),
    ...(csrPem !== undefined && { csrPem }),
  });
  // Recorded before it leaves this process: no certificate issued unrecorded.
  ctx.registry().appendAudit(ctx.actor, 'node.issue', `${r}:${name}`, {
    serial: issued.serial,
    notAfter: issued.notAfter,
    keyMadeHere: issued.keyPem !== undefined,
  });
  const files: [string, string, number][] = [];
  let where: string | undefined;
  if (issued.keyPem !== undefined) {
    const dir = opts.outDir ?? (r === 'server' ? join(ctx.paths.dataDir, 'node', 'servers') : undefined);
    const keyFile = dir === undefined ? ctx.paths.nodeKey : join(dir, `${name}.key`);
    const certFile = dir === undefined ? ctx.paths.nodeCert : join(dir, `${name}.crt`);
    files.push([keyFile, issued.keyPem, KEY_MODE], [certFile, issued.certPem, CERT_MODE]);
    where = certFile;
  } else if (opts.out !== undefined) {
    files.push([opts.out, issued.certPem, CERT_MODE]);
    where = opts.out;
  }
  writeAll(files, opts.replace === true);
  const dn = nodeDistinguishedName(r, name);
  emit(
    opts,
    {
      role: r,
      name,
      serial: issued.serial,
      notAfter: issued.notAfter,
      distinguishedName: dn,
      file: where ?? null,
      ...(where === undefined && { pem: issued.certPem }),
    },
    () =>
      where === undefined
        ? issued.certPem
        : `${r} certificate for ${name} → ${where} (serial ${issued.serial}, until ${issued.notAfter}; NATS maps ${dn})`,
  );
}

/** `fleetgate node request`: on the node's own host; the key never leaves it. */
function nodeRequestCommand(node: Command, common: CommonFlags): void {
  common(node.command('request <name>'))
    .description(
      "on the node's host: make its key (node/node.key in the data directory) and print a CSR for `fleetgate node issue --csr` on the CA's host",
    )
    .requiredOption('--role <role>', 'gateway, provisioning or operator')
    .option('--out <file>', 'write the CSR to this new file instead of standard output')
    .action(async (name: string, opts: CommonOptions & { role: string; out?: string }) => {
      await withContext(opts, async (ctx) => {
        const r = role(opts.role);
        if (existsSync(ctx.paths.nodeKey))
          throw new FleetgateError('NODE_CERT_EXISTS', `${ctx.paths.nodeKey} exists: this host has a node key already`);
        const { keyPem, csrPem } = await nodeKeyAndCsr(r, name);
        writeNewFile(ctx.paths.nodeKey, keyPem, KEY_MODE);
        if (opts.out !== undefined) writeNewFile(opts.out, csrPem, CERT_MODE);
        emit(
          opts,
          { key: ctx.paths.nodeKey, csr: opts.out ?? null, ...(opts.out === undefined && { pem: csrPem }) },
          () => (opts.out === undefined ? csrPem : `key → ${ctx.paths.nodeKey}; CSR → ${opts.out}`),
        );
      });
    });
}

/** `fleetgate node install`: the signed certificate back on the node's host, checked against its key. */
function nodeInstallCommand(node: Command, common: CommonFlags): void {
  common(node.command('install <cert>'))
    .description(
      "on the node's host: install the certificate `node issue --csr` signed (checked: a node certificate, for this host's key, from this fleet's CA)",
    )
    .option('--replace', 'replace an installed certificate (rotation)')
    .action(async (file: string, opts: CommonOptions & { replace?: boolean }) => {
      await withContext(opts, async (ctx) => {
        const pem = (await readInput(file)).toString('utf8');
        const who = nodeIdentityOf(pem);
        if (who === undefined)
          throw new FleetgateError('NODE_CERT_INVALID', `${file} is not a fleetgate node certificate`);
        if (!existsSync(ctx.paths.nodeKey))
          throw new FleetgateError(
            'NODE_CERT_INVALID',
            `no node key in ${ctx.paths.nodeKey}: run fleetgate node request first`,
          );
        const spki = (k: ReturnType<typeof createPublicKey>) => k.export({ type: 'spki', format: 'der' });
        const cert = new X509Certificate(pem);
        if (!spki(cert.publicKey).equals(spki(createPublicKey(createPrivateKey(readFileSync(ctx.paths.nodeKey))))))
          throw new FleetgateError('NODE_CERT_INVALID', `${file} is not for this host's key (${ctx.paths.nodeKey})`);
        const root = new X509Certificate(readFileSync(ctx.paths.rootCert, 'utf8'));
        const issuerPem = pem.split(/(?=-----BEGIN CERTIFICATE-----)/)[1];
        const issuer = issuerPem === undefined ? undefined : new X509Certificate(issuerPem);
        // Signatures, not only names: the issuing CA by the root, the certificate by the issuing CA.
        if (
          issuer === undefined ||
          !issuer.verify(root.publicKey) ||
          !cert.checkIssued(issuer) ||
          !cert.verify(issuer.publicKey)
        )
          throw new FleetgateError(
            'NODE_CERT_INVALID',
            `${file} does not chain to this fleet's root (${ctx.paths.rootCert})`,
          );
        writeAll([[ctx.paths.nodeCert, pem, CERT_MODE]], opts.replace === true);
        emit(
          opts,
          { file: ctx.paths.nodeCert, role: who.role, name: who.name, notAfter: who.notAfter.toISOString() },
          () =>
            `${who.role} certificate for ${who.name} installed → ${ctx.paths.nodeCert} (until ${who.notAfter.toISOString()}); restart the node to use it`,
        );
      });
    });
}

/** `fleetgate node show`: this host's identity. */
function nodeShowCommand(node: Command, common: CommonFlags): void {
  common(node.command('show'))
    .description("this host's node certificate: role, name, expiry, the DN NATS maps")
    .action(async (opts: CommonOptions) => {
      await withContext(opts, async (ctx) => {
        const id = loadNodeIdentity(ctx.paths, ctx.config.cluster);
        if (id === undefined)
          throw new FleetgateError(
            'NODE_CERT_NOT_FOUND',
            `no node certificate in ${ctx.paths.nodeCert}: fleetgate node issue <name> --role gateway`,
          );
        const daysLeft = Math.floor((id.notAfter.getTime() - Date.now()) / DAY);
        const r = role(id.role);
        emit(
          opts,
          {
            role: id.role,
            name: id.name,
            notAfter: id.notAfter.toISOString(),
            daysLeft,
            file: id.certFile,
            distinguishedName: nodeDistinguishedName(r, id.name),
          },
          () => `${id.role}:${id.name} until ${iso(id.notAfter.getTime())} (${daysLeft} days) — ${id.certFile}`,
        );
      });
    });
}
