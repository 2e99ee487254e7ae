/** limits middleware: per-key requests per minute, tokens per minute from usage, requests at once. */
import { limits } from '../../../middleware/limits';
import type { RouterError } from '../../../src/errors';
import type { ClientKey, RouterInstruments } from '../../../src/types';
import { makeCtx } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

function client(patch: Partial<ClientKey>): ClientKey {
  return { id: 'team-a', rpm: 0, tpm: 0, concurrency: 0, priority: 'normal', admin: false, ...patch };
}

function ctxFor(clock: FakeClock, c: ClientKey | undefined) {
  const ctx = makeCtx({ clock });
  (ctx as { client?: ClientKey }).client = c;
  return ctx;
}

function setup() {
  const clock = new FakeClock();
  const rateLimited = { inc: jest.fn() };
  const keyTokens = { inc: jest.fn() };
  const metrics = { rateLimited, keyTokens } as unknown as RouterInstruments;
  return { clock, mw: limits({}, { clock, metrics }), rateLimited, keyTokens };
}


async function refusal(p: Promise<void>): Promise<RouterError> {
  return p.then(
    () => {
      throw new Error('expected a 429');
    },
    (e: RouterError) => e,
  );
}

test('limits - a request without a client key passes untouched', async () => {
  const { clock, mw } = setup();
  const next = jest.fn(async () => undefined);
  for (let i = 0; i < 5; i++) await mw(ctxFor(clock, undefined), next);
  expect(next).toHaveBeenCalledTimes(5);
});

test('limits - requests per minute: over the bucket 429 RATE_LIMIT_EXCEEDED, Retry-After until one request refills', async () => {
  const { clock, mw, rateLimited } = setup();
  const c = client({ rpm: 2 });
  const next = jest.fn(async () => undefined);
  await mw(ctxFor(clock, c), next);
  await mw(ctxFor(clock, c), next);
  const err = await refusal(mw(ctxFor(clock, c), next));
  expect(err.code).toBe('RATE_LIMIT_EXCEEDED');
  expect(err.status).toBe(429);
  // 2 per minute: one more after 30 s.
  expect(err.retryAfterMs).toBe(30_000);
  expect(err.retryAfterSeconds()).toBe(30);
  expect(rateLimited.inc).toHaveBeenCalledWith({ key: 'team-a', limit: 'rpm' });
  expect(next).toHaveBeenCalledTimes(2);
  await clock.advance(20_000);
  const later = await refusal(mw(ctxFor(clock, c), next));
  expect(later.retryAfterMs).toBe(10_000);
  await clock.advance(10_000);
  await mw(ctxFor(clock, c), next);
  expect(next).toHaveBeenCalledTimes(3);
});

test('limits - tokens per minute are taken from the usage answers report; Retry-After until the bucket is above zero', async () => {
  const { clock, mw, keyTokens } = setup();
  const c = client({ tpm: 100 });
  const ctx = ctxFor(clock, c);
  await mw(ctx, async () => {
    ctx.result = { type: 'result', text: 'x', finish_reason: 'stop', usage: { prompt_tokens: 50, completion_tokens: 100, total_tokens: 150 } };
  });
  expect(keyTokens.inc).toHaveBeenCalledWith({ key: 'team-a' }, 150);
  // 100 - 150 = -50: 51 tokens to refill at 100 per minute.
  const err = await refusal(mw(ctxFor(clock, c), async () => undefined));
  expect(err.code).toBe('RATE_LIMIT_EXCEEDED');
  expect(err.message).toMatch(/100 tokens per minute/);
  expect(err.retryAfterMs).toBe(30_600);
  await clock.advance(30_600);
  const next = jest.fn(async () => undefined);
  await mw(ctxFor(clock, c), next);
  expect(next).toHaveBeenCalledTimes(1);
});

test('limits - a streamed answer counts its end usage too', async () => {
  const { clock, mw } = setup();
  const c = client({ tpm: 10 });
  const ctx = ctxFor(clock, c);
  await mw(ctx, async () => {
    ctx.end = { finish_reason: 'stop', usage: { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 } } as never;
  });
  await expect(mw(ctxFor(clock, c), async () => undefined)).rejects.toMatchObject({ code: 'RATE_LIMIT_EXCEEDED' });
});

test('limits - requests at once: one more than the limit is refused while the others run, and passes once one ends', async () => {
  const { clock, mw, rateLimited } = setup();
  const c = client({ concurrency: 2 });
  const releases: Array<() => void> = [];
  const hold = () => new Promise<void>((r) => releases.push(r));
  const first = mw(ctxFor(clock, c), hold);
  const second = mw(ctxFor(clock, c), hold);
  const err = await refusal(mw(ctxFor(clock, c), async () => undefined));
  expect(err.code).toBe('RATE_LIMIT_EXCEEDED');
  expect(err.message).toMatch(/concurrency 2/);
  expect(err.retryAfterMs).toBeGreaterThan(0);
  expect(rateLimited.inc).toHaveBeenCalledWith({ key: 'team-a', limit: 'concurrency' });
  await clock.advance(4000);
  releases[0]();
  await first;
  // The key's requests take 4 s on average; the oldest in flight is 4 s old: come back in about 0 s (at least 1 ms).
  const next = jest.fn(async () => undefined);
  await mw(ctxFor(clock, c), next);
  expect(next).toHaveBeenCalledTimes(1);
  const third = mw(ctxFor(clock, c), hold);
  const again = await refusal(mw(ctxFor(clock, c), async () => undefined));
  // Average 4 s (one sample; the quick one makes it 3.2 s), the oldest in flight is 4 s old.
  expect(again.retryAfterMs).toBeGreaterThanOrEqual(1);
  releases[1]();
  releases[2]();
  await Promise.all([second, third]);
});

test('limits - a failed request still frees its concurrency slot', async () => {
  const { clock, mw } = setup();
  const c = client({ concurrency: 1 });
  await expect(mw(ctxFor(clock, c), async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  const next = jest.fn(async () => undefined);
  await mw(ctxFor(clock, c), next);
  expect(next).toHaveBeenCalledTimes(1);
});

test('limits - keys are counted apart', async () => {
  const { clock, mw } = setup();
  const next = jest.fn(async () => undefined);
  await mw(ctxFor(clock, client({ id: 'a', rpm: 1 })), next);
  await expect(mw(ctxFor(clock, client({ id: 'a', rpm: 1 })), next)).rejects.toMatchObject({ code: 'RATE_LIMIT_EXCEEDED' });
  await mw(ctxFor(clock, client({ id: 'b', rpm: 1 })), next);
  expect(next).toHaveBeenCalledTimes(2);
});
