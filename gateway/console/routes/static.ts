import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyInstance } from 'fastify';
import { FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { SECURITY_HEADERS } from '../context.ts';

const requireFrom = createRequire(import.meta.url);
const STATIC: Record<string, { type: string; body: Buffer }> = {
  'uPlot.iife.min.js': {
    type: 'text/javascript; charset=utf-8',
    body: readFileSync(requireFrom.resolve('uplot/dist/uPlot.iife.min.js')),
  },
  'uPlot.min.css': {
    type: 'text/css; charset=utf-8',
    body: readFileSync(requireFrom.resolve('uplot/dist/uPlot.min.css')),
  },
  'console.js': {
    type: 'text/javascript; charset=utf-8',
    body: readFileSync(new URL('../static/console.js', import.meta.url)),
  },
  'console.css': {
    type: 'text/css; charset=utf-8',
    body: readFileSync(new URL('../static/console.css', import.meta.url)),
  },
};

/** The console's icon: a shield, as SVG (browsers ask for `/favicon.ico` whatever the page links). */
const FAVICON = Buffer.from(
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M8 1 2 3.5V8c0 3.3 2.6 6.2 6 7 3.4-.8 6-3.7 6-7V3.5z" fill="#2f6fde"/><path d="m5 8 2 2 4-4" stroke="#fff" stroke-width="1.6" fill="none"/></svg>',
);

/** The console's scripts, styles and icon (read once at start; cached by the browser for an hour). */
export async function staticRoutes(app: FastifyInstance): Promise<void> {
  app.get('/favicon.ico', async (_req, reply) =>
    reply
      .headers({ ...SECURITY_HEADERS, 'cache-control': 'private, max-age=86400' })
      .type('image/svg+xml')
      .send(FAVICON),
  );
  app.get<{ Params: { file: string } }>('/static/:file', async (req, reply) => {
    const f = STATIC[req.params.file];
    if (f === undefined) throw new FleetgateError('ROUTE_NOT_FOUND', `no static file ${req.params.file}`);
    return reply
      .headers({ ...SECURITY_HEADERS, 'cache-control': 'private, max-age=3600' })
      .type(f.type)
      .send(f.body);
  });
}
