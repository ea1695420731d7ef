import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULTS } from '../../config/config.ts';
import { mayPublish, maySubscribe, scopeFor } from './topics.ts';

const sensor = scopeFor(DEFAULTS.gateway.topics.sensor, { id: 's-1', fleet: 'north', type: 'sensor' });
const gateway = scopeFor(DEFAULTS.gateway.topics.gateway, { id: 'gw-1', fleet: 'north', type: 'gateway' }, [
  'child-1',
  'child-2',
]);
const service = scopeFor(DEFAULTS.gateway.topics.service, { id: 'svc', fleet: 'backend', type: 'service' });

const publish: [string, typeof sensor, string, boolean][] = [
  ['ok/own subtree', sensor, 'devices/s-1/telemetry', true],
  ['ok/own subtree deep', sensor, 'devices/s-1/a/b/c', true],
  ['error/own root only is outside the subtree', sensor, 'devices/s-1x/telemetry', false],
  ['error/another device', sensor, 'devices/s-2/telemetry', false],
  ['error/$SYS', sensor, '$SYS/broker/uptime', false],
  ['error/wildcard in publish', sensor, 'devices/s-1/+', false],
  ['error/hash in publish', sensor, 'devices/s-1/#', false],
  ['error/empty', sensor, '', false],
  ['ok/gateway for its child', gateway, 'devices/child-2/telemetry', true],
  ['ok/gateway own', gateway, 'devices/gw-1/status', true],
  ['error/gateway for a stranger', gateway, 'devices/s-1/telemetry', false],
  ['ok/service sends a command', service, 'devices/s-1/commands/reboot', true],
  ['error/service forges telemetry', service, 'devices/s-1/telemetry', false],
  ['error/service on $SYS', service, '$SYS/x', false],
];
for (const [name, scope, topic, ok] of publish)
  test(`publish/${name}`, () => assert.equal(mayPublish(scope, topic), ok));

const subscribe: [string, typeof sensor, string, boolean][] = [
  ['ok/own subtree', sensor, 'devices/s-1/#', true],
  ['ok/own commands', sensor, 'devices/s-1/commands/+', true],
  ['error/everything', sensor, '#', false],
  ['error/all devices', sensor, 'devices/+/commands', false],
  ['error/another device', sensor, 'devices/s-2/#', false],
  ['error/$SYS', sensor, '$SYS/#', false],
  ['ok/service all devices', service, 'devices/+/telemetry', true],
  ['error/service devices/# reaches past its + level', service, 'devices/#', false],
  ['ok/service one device', service, 'devices/s-1/#', true],
  ['error/service #', service, '#', false],
  ['error/service $SYS', service, '$SYS/#', false],
  ['ok/gateway child', gateway, 'devices/child-1/commands/#', true],
];
for (const [name, scope, filter, ok] of subscribe)
  test(`subscribe/${name}`, () => assert.equal(maySubscribe(scope, filter), ok));
