/**
 * The bridge from the router's attempt events to the operator event bus, driven by the real
 * attempt runner: each attempt's end becomes an observation, each attempt after the first a
 * `retry` (or `resume` when it continues a broken stream) naming the worker that failed before it.
 */
import { attemptRunner, type RouterEvent } from '../../src/attempt';
import { observeAttempts } from '../../src/controller/attempt-events';
import { EventBus, type ClusterEvent } from '../../src/controller/events';
import { RouterError } from '../../src/errors';
import { Listeners } from '../../src/listeners';
import { makeCtx, makeWorker } from '../helpers/context';
import { FakeClock } from '../helpers/fake-clock';

function setup(clock: FakeClock) {
  const routerEvents = new Listeners<RouterEvent>();
  const bus = new EventBus(200, () => clock.now());
  const seen: ClusterEvent[] = [];
  bus.subscribe((e) => seen.push(e));
  const stop = observeAttempts(routerEvents, bus);
  // Attempt 1 fails on w1 after 10 ms; attempt 2 on w2 streams its first chunk at 5 ms and ends at 20 ms.
  const run = attemptRunner(
    async (ctx) => {
      const n = ctx.attempt.number;
      ctx.worker = makeWorker(`w${n}`);
      ctx.attempt.traceparent = `00-${'a'.repeat(32)}-${String(n).padStart(16, '0')}-01`;
      if (n === 1) {
        await clock.advance(10);
        throw new RouterError('WORKER_ERROR', 'scripted failure', { worker: ctx.worker.id });
      }
      await clock.advance(5);
      ctx.attempt.firstChunkAt = clock.now();
      await clock.advance(15);
      ctx.result = { type: 'result', text: 'ok', finish_reason: 'stop', usage: { prompt_tokens: 3, completion_tokens: 7, total_tokens: 10 } };
    },
    { events: routerEvents },
  );
  return { routerEvents, seen, stop, run };
}

describe('observeAttempts', () => {
  test('attempt-events - a failed then a successful attempt: two observations and one retry naming the failed worker', async () => {
    const clock = new FakeClock();
    const { seen, run, stop, routerEvents } = setup(clock);
    const ctx = makeCtx({ clock });
    await expect(run(ctx)).rejects.toMatchObject({ code: 'WORKER_ERROR' });
    await run(ctx);
    expect(seen.map((e) => e.type)).toEqual(['attempt', 'retry', 'attempt']);
    expect(seen[0]).toMatchObject({ worker: 'w1', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: 10, attempt: 1 });
    expect(seen[0]).not.toHaveProperty('ttftMs');
    expect(seen[0]).not.toHaveProperty('completionTokens');
    expect(seen[1]).toMatchObject({ type: 'retry', requestId: 'req-test', attempt: 2, worker: 'w1', code: 'WORKER_ERROR' });
    expect(seen[2]).toMatchObject({
      worker: 'w2',
      outcome: 'success',
      code: null,
      durationMs: 20,
      ttftMs: 5,
      completionTokens: 7,
      attempt: 2,
      traceparent: `00-${'a'.repeat(32)}-${'2'.padStart(16, '0')}-01`,
    });
    stop();
    expect(routerEvents.size).toBe(0);
  });

  test('attempt-events - an attempt that continues a broken stream is a resume', async () => {
    const clock = new FakeClock();
    const { seen, run } = setup(clock);
    const ctx = makeCtx({ clock, request: { stream: true } });
    await expect(run(ctx)).rejects.toMatchObject({ code: 'WORKER_ERROR' });
    ctx.continuation = 'partial answer';
    await run(ctx);
    expect(seen.filter((e) => e.type === 'retry')).toHaveLength(0);
    expect(seen.find((e) => e.type === 'resume')).toMatchObject({ attempt: 2, worker: 'w1', code: 'WORKER_ERROR' });
  });

  test('attempt-events - wait timeouts are not attempts and reach no bus', () => {
    const clock = new FakeClock();
    const { seen, routerEvents } = setup(clock);
    routerEvents.emit({ type: 'wait-timeout', ctx: makeCtx({ clock }) });
    expect(seen).toHaveLength(0);
  });
});
