import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SubjectSet } from './interest.ts';

test('SubjectSet matches NATS subjects: exact, `*` for one token, a final `>` for one or more', () => {
  const s = new SubjectSet();
  for (const subject of ['fg.m.a.b', 'fg.m.c.>', 'fg.m.*.t', 'fg.m.d.*.>']) s.add(subject);
  const yes = ['fg.m.a.b', 'fg.m.c.x', 'fg.m.c.x.y', 'fg.m.q.t', 'fg.m.d.e.f', 'fg.m.d.e.f.g'];
  const no = ['fg.m.a', 'fg.m.a.b.c', 'fg.m.c', 'fg.m.q.t.u', 'fg.m.d.e', 'fg.l.x', 'fg.m'];
  for (const subject of yes) assert.equal(s.any(subject), true, subject);
  for (const subject of no) assert.equal(s.any(subject), false, subject);
  assert.equal(s.size, 4);
});

test('SubjectSet counts: a subject added twice stays until removed twice; removing what is not held changes nothing', () => {
  const s = new SubjectSet();
  for (const subject of ['fg.m.*.t', 'fg.m.*.t', 'fg.m.a', 'fg.m.a']) s.add(subject);
  s.remove('fg.m.*.t');
  s.remove('fg.m.a');
  assert.equal(s.any('fg.m.x.t'), true);
  assert.equal(s.any('fg.m.a'), true);
  s.remove('fg.m.*.t');
  s.remove('fg.m.a');
  s.remove('fg.m.*.t');
  s.remove('fg.m.*.u');
  s.remove('fg.m.zz');
  assert.equal(s.any('fg.m.x.t'), false);
  assert.equal(s.any('fg.m.a'), false);
  assert.equal(s.size, 0);
  // Every change moves the version on (what any() answered may no longer hold).
  const v = s.version;
  s.add('fg.m.b');
  s.remove('fg.m.b');
  assert.equal(s.version, v + 2);
  // The trie is pruned: adding again after a full removal works as from new.
  s.add('fg.m.*.t.>');
  assert.equal(s.any('fg.m.x.t.y'), true);
  assert.equal(s.any('fg.m.x.t'), false);
});
