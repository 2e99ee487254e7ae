/** PrefixIndex: insert, match, eviction, correction, epochs and forgetting workers. */
import { conversation, PrefixIndex, withAnswer } from '../../src/prefix-index';
import type { ChatMessage } from '../../src/protocol';
import { messageTokens } from '../../src/protocol';

const MODEL = 'm';
const SYSTEM: ChatMessage = { role: 'system', content: 'Shared instructions. '.repeat(50) };
const user = (content: string): ChatMessage => ({ role: 'user', content });
const conv = (...messages: ChatMessage[]) => conversation(MODEL, messages);
const cache = (size: number, epoch = 'e1') => ({ size, epoch });

test('prefix index - a conversation is a chain of hashes with token counts at message boundaries', () => {
  const c = conv(SYSTEM, user('hi'));
  expect(c.hashes).toHaveLength(2);
  expect(c.tokens).toEqual([messageTokens(SYSTEM), messageTokens(SYSTEM) + messageTokens(user('hi'))]);
  expect(c.total).toBe(c.tokens[1] + 3);
  // Same system prompt, same first hash; another model, another chain.
  expect(conv(SYSTEM, user('other')).hashes[0]).toBe(c.hashes[0]);
  expect(conversation('other-model', [SYSTEM]).hashes[0]).not.toBe(c.hashes[0]);
});

test('prefix index - match: the longest recorded prefix, per worker', () => {
  const index = new PrefixIndex(10);
  index.sync('w1', cache(10));
  index.sync('w2', cache(10));
  const t1 = conv(SYSTEM, user('q1'));
  expect(index.predict('w1', t1)).toBe(0);
  index.record('w1', t1.hashes);
  expect(index.predict('w1', t1)).toBe(t1.tokens[1]);
  expect(index.predict('w2', t1)).toBe(0);
  // Another user with the same system prompt: the system prompt is predicted cached.
  expect(index.predict('w1', conv(SYSTEM, user('q2')))).toBe(messageTokens(SYSTEM));
  // The next turn, after the answer was recorded: everything up to the new question.
  const answer = 'an answer';
  index.record('w1', withAnswer(t1, answer));
  const t2 = conv(SYSTEM, user('q1'), { role: 'assistant', content: answer }, user('q3'));
  expect(index.predict('w1', t2)).toBe(t2.tokens[2]);
  // Recording the longer chain replaced the entries it extends.
  expect(index.entries('w1')).toBe(1);
});

test('prefix index - eviction: the least recently used chain goes at the advertised capacity', () => {
  const index = new PrefixIndex(10);
  index.sync('w', cache(2));
  const a = conv(user('a'.repeat(400)));
  const b = conv(user('b'.repeat(400)));
  const c = conv(user('c'.repeat(400)));
  index.record('w', a.hashes);
  index.record('w', b.hashes);
  index.record('w', a.hashes); // a is used again: b is now the least recent
  index.record('w', c.hashes);
  expect(index.entries('w')).toBe(2);
  expect(index.predict('w', b)).toBe(0);
  expect(index.predict('w', a)).toBeGreaterThan(0);
  expect(index.predict('w', c)).toBeGreaterThan(0);
  // A smaller advertised cache trims at once.
  index.sync('w', cache(1));
  expect(index.entries('w')).toBe(1);
  expect(index.predict('w', c)).toBeGreaterThan(0);
});

test('prefix index - correction: drop forgets what was predicted for one worker only', () => {
  const index = new PrefixIndex(10);
  const t = conv(SYSTEM, user('q'));
  for (const w of ['w1', 'w2']) {
    index.sync(w, cache(10));
    index.record(w, t.hashes);
  }
  index.drop('w1');
  expect(index.predict('w1', t)).toBe(0);
  expect(index.predict('w2', t)).toBe(t.tokens[1]);
});

test('prefix index - a new epoch (restart) empties the worker; a worker no longer online is forgotten', () => {
  const index = new PrefixIndex(10);
  const t = conv(SYSTEM, user('q'));
  index.sync('w1', cache(10, 'first'));
  index.sync('w2', cache(10));
  index.record('w1', t.hashes);
  index.record('w2', t.hashes);
  index.sync('w1', cache(10, 'first'));
  expect(index.predict('w1', t)).toBeGreaterThan(0);
  index.sync('w1', cache(10, 'second'));
  expect(index.predict('w1', t)).toBe(0);
  index.retain(new Set(['w1']));
  expect(index.entries('w2')).toBe(0);
  expect(index.predict('w2', t)).toBe(0);
});

test('prefix index - a worker without a cache (size 0) is never predicted; unadvertised ones get the default', () => {
  const index = new PrefixIndex(1);
  const t = conv(SYSTEM, user('q'));
  index.sync('none', cache(0));
  index.record('none', t.hashes);
  expect(index.predict('none', t)).toBe(0);
  index.sync('quiet', undefined);
  index.record('quiet', t.hashes);
  index.record('quiet', conv(user('other')).hashes);
  expect(index.entries('quiet')).toBe(1);
});

test('prefix index - content that is not a string (content parts) is hashed and counted as JSON, never throws', () => {
  const parts = [{ type: 'text', text: 'hello' }];
  const c = conversation(MODEL, [{ role: 'user', content: parts as never }]);
  expect(c.hashes).toHaveLength(1);
  expect(c.tokens[0]).toBe(3 + Math.ceil(JSON.stringify(parts).length / 4));
  expect(conversation(MODEL, [{ role: 'user', content: parts as never }]).hashes).toEqual(c.hashes);
});

test('prefix index - continues: the next turn extends a whole entry; a new conversation on a shared prompt does not', () => {
  const index = new PrefixIndex(10);
  index.sync('w', cache(10));
  const t1 = conv(SYSTEM, user('q1'));
  index.route('w', t1.hashes);
  index.record('w', withAnswer(t1, 'a1'));
  const t2 = conv(SYSTEM, user('q1'), { role: 'assistant', content: 'a1' }, user('q2'));
  expect(index.continues('w', t2)).toBe(true);
  expect(index.continues('w', conv(SYSTEM, user('someone else')))).toBe(false);
  expect(index.continues('other', t2)).toBe(false);
});

test('prefix index - reuse distance: requests routed between two turns of a conversation, learned from continuations only', () => {
  const index = new PrefixIndex(10);
  index.sync('w', cache(10));
  expect(index.reuseDistance).toBeUndefined();
  const a1 = conv(SYSTEM, user('alice 1'));
  index.route('w', a1.hashes);
  index.record('w', withAnswer(a1, 'x'));
  // Three new conversations in between: not continuations, no distance yet.
  for (const u of ['b', 'c', 'd']) index.route('w', conv(SYSTEM, user(u)).hashes);
  expect(index.reuseDistance).toBeUndefined();
  index.route('w', conv(SYSTEM, user('alice 1'), { role: 'assistant', content: 'x' }, user('alice 2')).hashes);
  expect(index.reuseDistance).toBe(4);
  // A retry (observe false) continues the entry its attempt just recorded: not a distance.
  index.route('w', conv(SYSTEM, user('alice 1'), { role: 'assistant', content: 'x' }, user('alice 2')).hashes, false);
  expect(index.reuseDistance).toBe(4);
});

test('prefix index - pressured: full, and its least recently used entry younger than the reuse distance', () => {
  const index = new PrefixIndex(10);
  index.sync('w', cache(2));
  index.sync('roomy', cache(2));
  const turn = (who: string, n: number) => {
    const messages: ChatMessage[] = [SYSTEM];
    for (let i = 1; i <= n; i++) messages.push(user(`${who} ${i}`), { role: 'assistant', content: `${who} answer ${i}` });
    messages.push(user(`${who} ${n + 1}`));
    return conv(...messages);
  };
  const play = (id: string, who: string, n: number) => {
    const c = turn(who, n);
    index.route(id, c.hashes);
    index.record(id, withAnswer(c, `${who} answer ${n + 1}`));
  };
  // Two conversations fill w's two slots; no reuse distance yet, so not pressured.
  play('w', 'alice', 0);
  play('w', 'bob', 0);
  expect(index.pressured('w')).toBe(false);
  // Their next turns come back every 2 requests: the distance is 2.
  play('w', 'alice', 1);
  play('w', 'bob', 1);
  expect(index.reuseDistance).toBe(2);
  // Full, least recently used entry (alice) used 1 request ago < 2: a new conversation would evict a live one.
  expect(index.pressured('w')).toBe(true);
  // A worker with a free slot is never pressured.
  play('roomy', 'carol', 0);
  expect(index.pressured('roomy')).toBe(false);
  // Requests elsewhere age w's entries: once its oldest is older than the distance, it has room again.
  play('roomy', 'dave', 0);
  play('roomy', 'erin', 0);
  expect(index.pressured('w')).toBe(false);
});

test('prefix index - routing stores nothing: only an answered request is predicted (the engine stores a prompt once answered)', () => {
  const index = new PrefixIndex(10);
  index.sync('w', cache(10));
  const t = conv(SYSTEM, user('q'));
  index.route('w', t.hashes);
  expect(index.entries('w')).toBe(0);
  expect(index.predict('w', conv(SYSTEM, user('another')))).toBe(0);
  index.record('w', withAnswer(t, 'a'));
  expect(index.predict('w', conv(SYSTEM, user('another')))).toBe(messageTokens(SYSTEM));
});
