import { REVOCATION_REASONS, revocationReasonName } from '../../provisioning/registry/reasons.ts';
import type { AuditRecord, DenyRecord, DeviceRecord } from '../../provisioning/registry/records.ts';
import type { RefusedDevice } from '../refused-devices.ts';
import type { SessionInfo } from '../sessions.ts';
import { type Html, html } from './html.ts';
import type { Snapshot } from './live.ts';
import type { Findings, Page } from './queries.ts';

/** Who is looking: from the client certificate of this connection, checked on every request. */
export interface Viewer {
  id: string;
  role: 'operator' | 'auditor';
  fingerprint: string;
}

const NAV = [
  ['/', 'Overview'],
  ['/devices', 'Devices'],
  ['/certificates', 'Certificates'],
  ['/denylist', 'Denylist'],
  ['/audit', 'Audit log'],
] as const;

const iso = (ms: number | null | undefined) =>
  ms === null || ms === undefined ? '–' : new Date(ms).toISOString().replace('.000Z', 'Z');
const short = (hex: string) => (hex.length > 16 ? `${hex.slice(0, 16)}…` : hex);

/** A link with a query string built from the given (non-empty) parameters. */
export function href(path: string, params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s === '' ? path : `${path}?${s}`;
}

export function layout(
  viewer: Viewer,
  active: string,
  title: string,
  body: Html,
  options: { live?: boolean } = {},
): Html {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · fleetgate console</title>
<link rel="stylesheet" href="/static/console.css"><link rel="icon" href="/favicon.ico" type="image/svg+xml">
${options.live === true ? html`<link rel="stylesheet" href="/static/uPlot.min.css"><script src="/static/uPlot.iife.min.js" defer></script><script type="module" src="/static/console.js"></script>` : ''}
</head><body>
<header><a class="brand" href="/">fleetgate</a><nav>${NAV.map(([path, label]) => html`<a href="${path}"${path === active ? html` aria-current="page"` : ''}>${label}</a>`)}</nav>
<span class="who" title="certificate ${viewer.fingerprint}">${viewer.id} · ${viewer.role === 'operator' ? 'operator' : 'auditor (read-only)'}</span></header>
<main><h1>${title}</h1>${body}</main>
</body></html>`;
}

export function errorPage(status: number, code: string, message: string): Html {
  return html`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${status} ${code} · fleetgate console</title>
<link rel="stylesheet" href="/static/console.css"></head><body><main><h1>${status} ${code}</h1><p class="error">${message}</p>
<p><a href="/">Back to the overview</a></p></main></body></html>`;
}

function table(headers: readonly string[], rows: readonly Html[], empty = 'nothing here'): Html {
  if (rows.length === 0) return html`<p class="empty">${empty}</p>`;
  return html`<table><thead><tr>${headers.map((h) => html`<th>${h}</th>`)}</tr></thead><tbody>${rows}</tbody></table>`;
}

const badge = (status: string) => html`<span class="badge ${status}">${status}</span>`;

// ---------------------------------------------------------------- overview

export function overviewPage(
  viewer: Viewer,
  snap: Snapshot,
  counts: { byStatus: Record<string, number>; byType: Record<string, number> },
): Html {
  const card = (id: string, label: string, value: string) =>
    html`<div class="card"><div class="value" id="${id}">${value}</div><div class="label">${label}</div></div>`;
  return layout(
    viewer,
    '/',
    'Overview',
    html`
<section class="cards">
${card('v-connected', 'connected devices', String(snap.connected))}
${card('v-connects', 'connects / s', snap.connectsPerSec.toFixed(1))}
${card('v-messages', 'messages / s (in + out)', (snap.messagesInPerSec + snap.messagesOutPerSec).toFixed(1))}
${card('v-refusals', 'refusals / s', snap.refusalsPerSec.toFixed(1))}
${card('v-cuts', 'sessions cut by revocation', String(snap.cutsByRevocation))}
${card('v-p99', 'p99 mTLS handshake, last 30 s (ms)', snap.handshakeP99Ms === null ? '–' : snap.handshakeP99Ms.toFixed(1))}
</section>
<section class="charts">
<figure><figcaption>Connected devices</figcaption><div id="chart-connected" class="chart"></div></figure>
<figure><figcaption>Messages / s</figcaption><div id="chart-messages" class="chart"></div></figure>
<figure><figcaption>Connects and refusals / s</figcaption><div id="chart-connects" class="chart"></div></figure>
</section>
<section class="columns">
<div><h2>Connected by type and transport</h2><div id="t-connected">${connectedTable(snap)}</div></div>
<div><h2>Refusals by code</h2><div id="t-refusals">${refusalsTable(snap)}</div></div>
<div><h2>Registry</h2>${table(
      ['status', 'devices'],
      Object.entries(counts.byStatus).map(([s, n]) => html`<tr><td>${badge(s)}</td><td class="num">${n}</td></tr>`),
      'no devices',
    )}
${table(
  ['type', 'devices'],
  Object.entries(counts.byType).map(([t, n]) => html`<tr><td>${t}</td><td class="num">${n}</td></tr>`),
  '',
)}</div>
</section>
<p class="hint" id="v-nodes">${snap.nodes === undefined ? '' : `Cluster: the figures of ${snap.nodes.length} node${snap.nodes.length === 1 ? '' : 's'} (${snap.nodes.join(', ')}), summed; a node that does not answer is left out of a sample.`}</p>
<p class="hint" id="live-state">Live: updated every ${snap.intervalS} s from the gateway's own metrics (the numbers <code>/metrics</code> exports)${snap.nodes === undefined ? '' : ', on every node that answers'}.</p>`,
    { live: true },
  );
}

export function connectedTable(snap: Snapshot): Html {
  return table(
    ['type', 'transport', 'sessions'],
    snap.connectedBy.map(
      (c) => html`<tr><td>${c.type}</td><td>${c.transport}</td><td class="num">${c.count}</td></tr>`,
    ),
    'no live sessions',
  );
}

export function refusalsTable(snap: Snapshot): Html {
  return table(
    ['code', 'since start'],
    snap.refusalsByCode.map((r) => html`<tr><td><code>${r.code}</code></td><td class="num">${r.count}</td></tr>`),
    'no refusals',
  );
}

// ---------------------------------------------------------------- devices

export function devicesPage(
  viewer: Viewer,
  filter: Record<string, string | undefined>,
  page: Page<DeviceRecord>,
  live: (id: string) => number,
): Html {
  const select = (name: string, options: readonly string[]) =>
    html`<select name="${name}"><option value="">any ${name}</option>${options.map((o) => html`<option${filter[name] === o ? html` selected` : ''}>${o}</option>`)}</select>`;
  const base = { q: filter.q, type: filter.type, fleet: filter.fleet, status: filter.status };
  return layout(
    viewer,
    '/devices',
    'Devices',
    html`
<form class="filters" method="get" action="/devices">
<input name="q" placeholder="device id starts with…" value="${filter.q ?? ''}" aria-label="device id prefix">
${select('type', ['sensor', 'gateway', 'camera', 'service', 'operator', 'auditor'])}
<input name="fleet" placeholder="fleet" value="${filter.fleet ?? ''}" aria-label="fleet">
${select('status', ['pending', 'active', 'suspended', 'revoked'])}
<button type="submit">Search</button></form>
<p class="count" id="device-count">${page.total} device${page.total === 1 ? '' : 's'}</p>
${table(
  ['device', 'type', 'fleet', 'status', 'live sessions', 'created'],
  page.rows.map(
    (d) => html`<tr>
<td><a href="/devices/${encodeURIComponent(d.id)}">${d.id}</a></td><td>${d.type}</td><td>${d.fleet}</td><td>${badge(d.status)}</td>
<td class="num">${live(d.id) || ''}</td><td>${iso(d.createdAt)}</td></tr>`,
  ),
  'no device matches',
)}
${pager(page.prev === null ? null : href('/devices', { ...base, before: page.prev }), page.next === null ? null : href('/devices', { ...base, after: page.next }))}`,
  );
}

function pager(prev: string | null, next: string | null): Html {
  return html`<nav class="pager">${prev === null ? html`<span>← previous</span>` : html`<a rel="prev" href="${prev}">← previous</a>`}
${next === null ? html`<span>next →</span>` : html`<a rel="next" href="${next}">next →</a>`}</nav>`;
}

export interface DeviceView {
  device: DeviceRecord;
  certificates: {
    serial: string;
    fingerprint: string;
    spkiSha256: string;
    notBefore: number;
    notAfter: number;
    issuedAt: number;
    method: string;
    supersededBy: string | null;
    revocation: { reason: number; revokedAt: number; actor: string } | null;
  }[];
  children: string[];
  audit: AuditRecord[];
  denied: DenyRecord[];
}

export function devicePage(viewer: Viewer, view: DeviceView, sessions: (SessionInfo & { node?: string })[]): Html {
  const d = view.device;
  const now = Date.now();
  const act = viewer.role === 'operator';
  const action = (name: string, label: string, extra: Record<string, string> = {}, danger = false) =>
    html`<a class="button${danger ? ' danger' : ''}" href="${href('/confirm', { action: name, id: d.id, ...extra })}">${label}</a>`;
  const certStatus = (c: DeviceView['certificates'][number]) =>
    c.revocation !== null
      ? `revoked (${revocationReasonName(c.revocation.reason)})`
      : c.notAfter <= now
        ? 'expired'
        : c.supersededBy !== null
          ? `superseded by ${short(c.supersededBy)}`
          : 'valid';
  return layout(
    viewer,
    '/devices',
    `Device ${d.id}`,
    html`
<p class="facts">${badge(d.status)} <span>type <b>${d.type}</b></span> <span>fleet <b>${d.fleet}</b></span>
${d.parent === null ? '' : html`<span>behind gateway <a href="/devices/${encodeURIComponent(d.parent)}">${d.parent}</a></span>`}
<span>created ${iso(d.createdAt)}</span> <span>updated ${iso(d.updatedAt)}</span></p>
${view.children.length > 0 ? html`<p>Children: ${view.children.map((c, i) => html`${i > 0 ? ', ' : ''}<a href="/devices/${encodeURIComponent(c)}">${c}</a>`)}</p>` : ''}
${
  act
    ? html`<section class="actions" aria-label="actions">
${d.status === 'suspended' ? action('resume', 'Resume') : d.status !== 'revoked' ? action('suspend', 'Suspend…') : ''}
${d.status !== 'revoked' ? action('revoke', 'Revoke…', {}, true) : ''}
${sessions.length > 0 ? action('kick', `Kick ${sessions.length} session${sessions.length === 1 ? '' : 's'}…`) : ''}
${action('deny', 'Deny device…', { kind: 'device', value: d.id }, true)}
${d.status !== 'revoked' ? action('token', 'Issue enrollment token…') : ''}
</section>`
    : html`<p class="hint">Read-only: an auditor sees this device but cannot act on it.</p>`
}
<h2>Live sessions</h2>
${table(
  [
    'session',
    ...(sessions.some((s) => s.node !== undefined) ? ['node'] : []),
    'transport',
    'from',
    'since',
    'certificate',
  ],
  sessions.map(
    (s) =>
      html`<tr><td>${s.id}</td>${s.node === undefined ? '' : html`<td>${s.node}</td>`}<td>${s.transport}</td><td>${s.remoteAddress}</td><td>${s.since}</td><td><code>${short(s.serial)}</code></td></tr>`,
  ),
  'not connected',
)}
<h2>Certificates</h2>
${table(
  ['serial', 'fingerprint (SHA-256)', 'issued', 'not after', 'method', 'status', ...(act ? [''] : [])],
  view.certificates.map(
    (c) => html`<tr>
<td><code>${c.serial}</code></td><td><code title="${c.fingerprint}">${short(c.fingerprint)}</code></td><td>${iso(c.issuedAt)}</td><td>${iso(c.notAfter)}</td><td>${c.method}</td><td>${certStatus(c)}</td>
${
  act
    ? html`<td class="row-actions">${c.revocation === null ? action('revokeCertificate', 'revoke…', { serial: c.serial }, true) : ''}
${action('deny', 'deny cert…', { kind: 'fingerprint', value: c.fingerprint })} ${action('deny', 'deny key…', { kind: 'spki', value: c.spkiSha256 })}</td>`
    : ''
}</tr>`,
  ),
  'no certificate issued yet',
)}
<h2>Denylist entries</h2>
${denyTable(viewer, view.denied, 'none for this device')}
<h2>Recent audit events</h2>
${auditTable(view.audit, 'no audit events')}
<p><a href="${href('/audit', { device: d.id })}">All audit events of ${d.id} →</a></p>`,
  );
}

// ---------------------------------------------------------------- confirmation and results

export interface ConfirmSpec {
  action: string;
  title: string;
  /** What will happen, in one sentence. */
  effect: string;
  fields: Html;
  hidden: Record<string, string>;
  danger: boolean;
}

export function confirmPage(viewer: Viewer, spec: ConfirmSpec, csrf: string, back: string): Html {
  return layout(
    viewer,
    '/devices',
    spec.title,
    html`
<form class="confirm" method="post" action="/act">
<p class="effect">${spec.effect}</p>
<input type="hidden" name="csrf" value="${csrf}"><input type="hidden" name="action" value="${spec.action}">
${Object.entries(spec.hidden).map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">`)}
${spec.fields}
<p><button type="submit" class="${spec.danger ? 'danger' : ''}" id="confirm">Confirm</button> <a href="${back}">Cancel</a></p>
</form>`,
  );
}

export const reasonSelect = () =>
  html`<label>Reason <select name="reason">${Object.keys(REVOCATION_REASONS).map((name) => html`<option${name === 'cessationOfOperation' ? html` selected` : ''}>${name}</option>`)}</select></label>`;

export function resultPage(
  viewer: Viewer,
  title: string,
  message: string,
  state: Html,
  back: { href: string; label: string },
): Html {
  return layout(
    viewer,
    '/devices',
    title,
    html`<p class="done" role="status">${message}</p>${state}<p><a href="${back.href}">${back.label}</a></p>`,
  );
}

export function tokenResult(deviceId: string, token: string, expiresAt: number): Html {
  return html`<div class="secret"><p>Enrollment token for <b>${deviceId}</b>, shown once (expires ${iso(expiresAt)}):</p>
<pre id="token">${token}</pre><p class="hint">Give it to the factory station or the device; fleetgate keeps only its hash.</p></div>`;
}

export function deviceState(d: DeviceRecord, extra: Html | string = ''): Html {
  return html`<p class="facts">Device <a href="/devices/${encodeURIComponent(d.id)}">${d.id}</a> is now ${badge(d.status)} ${extra}</p>`;
}

// ---------------------------------------------------------------- certificates

export function certificatesPage(
  viewer: Viewer,
  view: string,
  data: {
    expiring?: { rows: Record<string, unknown>[]; next: string | null; withinDays: number };
    revoked?: { rows: Record<string, unknown>[]; next: string | null };
    findings?: Findings & { refused: RefusedDevice[]; refusedNodes?: string[] };
  },
): Html {
  const tabs = [
    ['expiring', 'Expiring soon'],
    ['revoked', 'Revoked'],
    ['findings', 'Findings'],
  ] as const;
  const link = (id: unknown) => html`<a href="/devices/${encodeURIComponent(String(id))}">${String(id)}</a>`;
  let body: Html;
  if (data.expiring !== undefined) {
    const e = data.expiring;
    body = html`<form class="filters" method="get" action="/certificates"><input type="hidden" name="view" value="expiring">
<label>within <input name="within" type="number" min="1" max="3650" value="${e.withinDays}"> days</label> <button>Show</button></form>
${table(
  ['serial', 'device', 'not after', 'issued'],
  e.rows.map(
    (r) =>
      html`<tr><td><code>${r.serial}</code></td><td>${link(r.device_id)}</td><td>${iso(r.not_after as number)}</td><td>${iso(r.issued_at as number)}</td></tr>`,
  ),
  'no valid certificate expires in that window',
)}
${pager(null, e.next === null ? null : href('/certificates', { view: 'expiring', within: e.withinDays, after: e.next }))}`;
  } else if (data.revoked !== undefined) {
    const r = data.revoked;
    body = html`${table(
      ['serial', 'device', 'reason', 'revoked', 'by'],
      r.rows.map(
        (x) => html`<tr><td><code>${x.serial}</code></td><td>${link(x.device_id)}</td>
<td>${revocationReasonName(x.reason as number)}</td><td>${iso(x.revoked_at as number)}</td><td>${x.actor}</td></tr>`,
      ),
      'no certificate revoked',
    )}
${pager(null, r.next === null ? null : href('/certificates', { view: 'revoked', before: r.next }))}`;
  } else {
    const f = data.findings!;
    body = html`<h2 id="shared-keys">One key in several devices' certificates</h2>
<p class="hint">A key is made on the device and never leaves it: the same key on two devices means a copied key or cloned firmware.</p>
${table(
  ['key (SPKI SHA-256)', 'devices', 'certificates'],
  f.sharedKeys.map(
    (k) => html`<tr><td><code title="${k.spki}">${short(k.spki)}</code></td>
<td>${k.devices.map((d, i) => html`${i > 0 ? ', ' : ''}${link(d)}`)}</td><td class="num">${k.certificates}</td></tr>`,
  ),
  'no shared key',
)}
<h2 id="still-connecting">Still seen connecting with a certificate it may not use</h2>
<p class="hint">Refusals by code per device since this gateway started (revoked, superseded or expired certificates; revoked, suspended or denylisted devices)${f.refusedNodes === undefined ? '.' : `: every node that answered (${f.refusedNodes.join(', ')}), each since it started, summed.`}</p>
${table(
  ['device', 'refusals by code', 'last', 'last certificate'],
  f.refused.map(
    (r) => html`<tr><td>${link(r.deviceId)}</td>
<td>${Object.entries(r.codes).map(([c, n]) => html`<code>${c}</code> × ${n} `)}</td><td>${iso(r.lastAt)}</td><td><code>${r.lastSerial ?? '–'}</code></td></tr>`,
  ),
  'none seen',
)}
<h2 id="never-renewed">Never renewed</h2>
<p class="hint">Active devices still on their first certificate past half its lifetime (${f.neverRenewedTotal} in all; the 100 closest to expiry shown).</p>
${table(
  ['device', 'serial', 'issued', 'not after'],
  f.neverRenewed.map(
    (n) =>
      html`<tr><td>${link(n.deviceId)}</td><td><code>${n.serial}</code></td><td>${iso(n.issuedAt)}</td><td>${iso(n.notAfter)}</td></tr>`,
  ),
  'none',
)}`;
  }
  return layout(
    viewer,
    '/certificates',
    'Certificates',
    html`<nav class="tabs">${tabs.map(([id, label]) => html`<a href="/certificates?view=${id}"${id === view ? html` aria-current="page"` : ''}>${label}</a>`)}</nav>${body}`,
  );
}

// ---------------------------------------------------------------- denylist and audit

function denyTable(viewer: Viewer, rows: readonly DenyRecord[], empty: string): Html {
  return table(
    ['kind', 'value', 'reason', 'expires', 'added', 'by', ...(viewer.role === 'operator' ? [''] : [])],
    rows.map(
      (r) => html`<tr>
<td>${r.kind}</td><td><code title="${r.value}">${r.kind === 'device' ? r.value : short(r.value)}</code></td><td>${r.reason ?? ''}</td><td>${iso(r.expiresAt)}</td><td>${iso(r.createdAt)}</td><td>${r.actor}</td>
${viewer.role === 'operator' ? html`<td><a class="button" href="${href('/confirm', { action: 'allow', kind: r.kind, value: r.value })}">remove…</a></td>` : ''}</tr>`,
    ),
    empty,
  );
}

export function denylistPage(viewer: Viewer, kind: string | undefined, page: Page<DenyRecord>): Html {
  return layout(
    viewer,
    '/denylist',
    'Denylist',
    html`
<form class="filters" method="get" action="/denylist"><select name="kind" aria-label="kind"><option value="">any kind</option>
${['fingerprint', 'spki', 'device'].map((k) => html`<option${kind === k ? html` selected` : ''}>${k}</option>`)}</select> <button>Filter</button>
<a href="${href('/denylist.jsonl', { kind })}" download>Export as JSON lines</a></form>
<p class="count">${page.total} entr${page.total === 1 ? 'y' : 'ies'}</p>
${denyTable(viewer, page.rows, 'the denylist is empty')}
${pager(null, page.next === null ? null : href('/denylist', { kind, after: page.next }))}
${
  viewer.role === 'operator'
    ? html`<h2>Add an entry</h2><form class="filters" method="get" action="/confirm"><input type="hidden" name="action" value="deny">
<select name="kind" aria-label="kind"><option>fingerprint</option><option>spki</option><option>device</option></select>
<input name="value" placeholder="64 hex digits, or a device id" required aria-label="value"> <button>Continue…</button></form>`
    : ''
}`,
  );
}

function auditTable(rows: readonly AuditRecord[], empty: string): Html {
  return table(
    ['#', 'time', 'actor', 'action', 'subject', 'detail'],
    rows.map(
      (a) => html`<tr><td class="num">${a.seq}</td><td>${iso(a.at)}</td><td>${a.actor}</td>
<td><code>${a.action}</code></td><td>${a.subject ?? ''}</td><td class="detail">${auditDetail(a.detail)}</td></tr>`,
    ),
    empty,
  );
}

/**
 * An audit row's detail as a short list of facts (`reason keyCompromise`, `serials 1a2b…, 3c4d…`),
 * not raw JSON; nested values stay JSON, long ones are cut (the export has them whole).
 */
export function auditDetail(detail: Readonly<Record<string, unknown>>): Html {
  const facts = Object.entries(detail).filter(([, v]) => v !== null && v !== undefined && v !== '');
  if (facts.length === 0) return html``;
  const shown = (v: unknown): string => {
    const text =
      Array.isArray(v) && v.every((x) => typeof x !== 'object')
        ? v.join(', ')
        : typeof v === 'object'
          ? JSON.stringify(v)
          : String(v);
    return text.length > 120 ? `${text.slice(0, 119)}…` : text;
  };
  return html`<dl class="facts-inline">${facts.map(([k, v]) => html`<dt>${k}</dt><dd>${shown(v)}</dd>`)}</dl>`;
}

export function auditPage(viewer: Viewer, filter: Record<string, string | undefined>, page: Page<AuditRecord>): Html {
  const base = { device: filter.device, actor: filter.actor, action: filter.action };
  return layout(
    viewer,
    '/audit',
    'Audit log',
    html`
<form class="filters" method="get" action="/audit">
<input name="device" placeholder="device" value="${filter.device ?? ''}" aria-label="device">
<input name="actor" placeholder="actor" value="${filter.actor ?? ''}" aria-label="actor">
<input name="action" placeholder="action (device.revoke, session.disconnect…)" value="${filter.action ?? ''}" aria-label="action">
<button>Filter</button> <a href="${href('/audit.jsonl', base)}" download>Export as JSON lines</a></form>
${auditTable(page.rows, 'no audit event matches')}
${pager(null, page.next === null ? null : href('/audit', { ...base, before: page.next }))}`,
  );
}
