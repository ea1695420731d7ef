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

/** The console's scripts and styles (read once at start; cached by the browser for an hour). */
export async function staticRoutes(app: FastifyInstance): Promise<void> {
  app.get<{ Params: { file: string } }>('/static/:file', async (req, reply) => {
    const f = STATIC[req.params.file];
    if (f === undefined) throw new FleetgateError('ROUTE_NOT_FOUND', `no static file ${req.params.file}`);
    return reply
      .headers({ ...SECURITY_HEADERS, 'cache-control': 'private, max-age=3600' })
      .type(f.type)
      .send(f.body);
  });
}
