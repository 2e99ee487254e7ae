/** The synthetic engine: deterministic, honest about finish_reason and usage, cancellable. */
import type { Clock } from '../../src/clock';
import type { WireRequest } from '../../src/protocol';
import { EngineError, type EngineResult } from '../../src/worker/engine';
import { naturalLength, promptSeed, promptTokens, syntheticEngine, type SyntheticOptions } from '../../src/worker/synthetic';
import { FakeClock, InstantClock } from '../helpers/fake-clock';

const MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';

function engine(patch: Partial<SyntheticOptions> = {}, clock: Clock = new InstantClock()) {
  return syntheticEngine({ models: [MODEL], ttftMs: 0, tokenMs: 0, failRate: 0, clock, ...patch });
}

function request(patch: Partial<WireRequest> = {}): WireRequest {
  return { model: MODEL, messages: [{ role: 'user', content: 'Tell me about routers' }], stream: false, ...patch };
}

/** Runs one generation and collects its pieces. */
async function generate(e: ReturnType<typeof engine>, req: WireRequest, signal = new AbortController().signal) {
  const pieces: string[] = [];
  const result: EngineResult = await e.generate(req, (t) => pieces.push(t), signal);
  return { pieces, text: pieces.join(''), result };
}

test('synthetic - the same request gives the same text on any engine instance', async () => {
  const a = await generate(engine(), request());
  const b = await generate(engine(), request());
  expect(a.text.length).toBeGreaterThan(0);
  expect(b.text).toBe(a.text);
  expect(b.result).toEqual(a.result);
});

test('synthetic - a different prompt or model gives a different text', async () => {
  const base = await generate(engine(), request());
  const other = await generate(engine(), request({ messages: [{ role: 'user', content: 'Tell me about switches' }] }));
  const model = await generate(engine(), request({ model: 'other-model' }));
  expect(other.text).not.toBe(base.text);
  expect(model.text).not.toBe(base.text);
});

test('synthetic - the buffered text equals the concatenated streamed pieces, token delays or not', async () => {
  const buffered = await generate(engine({ tokenMs: 0 }), request());
  const streamed = await generate(engine({ tokenMs: 5, ttftMs: 20 }), request({ stream: true }));
  expect(streamed.pieces.length).toBeGreaterThan(1);
  expect(streamed.text).toBe(buffered.text);
  expect(streamed.result.usage).toEqual(buffered.result.usage);
});

test('synthetic - one piece per token, each later token starting with a space', async () => {
  const { pieces, result } = await generate(engine(), request());
  expect(pieces).toHaveLength(result.usage.completion_tokens);
  expect(pieces[0].startsWith(' ')).toBe(false);
  for (const p of pieces.slice(1)) expect(p).toMatch(/^ \S+$/);
});

test('synthetic - without max_tokens it stops at its natural length with finish_reason stop', async () => {
  const req = request();
  const { result } = await generate(engine(), req);
  expect(result.finishReason).toBe('stop');
  expect(result.usage.completion_tokens).toBe(naturalLength(promptSeed(req)));
});

test('synthetic - at max_tokens it ends with finish_reason length and exactly that many tokens', async () => {
  const { text, result } = await generate(engine(), request({ max_tokens: 3 }));
  expect(result.finishReason).toBe('length');
  expect(result.usage.completion_tokens).toBe(3);
  expect(text.split(' ')).toHaveLength(3);
});

test('synthetic - a max_tokens answer is a prefix of the longer answer', async () => {
  const short = await generate(engine(), request({ max_tokens: 4 }));
  const long = await generate(engine(), request({ max_tokens: 40 }));
  expect(long.text.startsWith(short.text)).toBe(true);
});

test('synthetic - usage adds up: total = prompt + completion', async () => {
  const req = request({ messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }] });
  const { result } = await generate(engine(), req);
  expect(result.usage.prompt_tokens).toBe(promptTokens(req));
  expect(result.usage.total_tokens).toBe(result.usage.prompt_tokens + result.usage.completion_tokens);
});

test('synthetic - a stop sequence of one whole token cuts the text exactly before it, with finish_reason stop', async () => {
  const full = (await generate(engine(), request({ max_tokens: 30 }))).text;
  const words = full.split(' ');
  // A leading space and no other: the match lies inside one token, wherever it first occurs.
  const stop = ` ${words[5]}`;
  const expected = full.slice(0, full.indexOf(stop));
  const { text, result } = await generate(engine(), request({ max_tokens: 30, stop: [stop] }));
  expect(text).toBe(expected);
  expect(result.finishReason).toBe('stop');
});

test('synthetic - a stop sequence inside a token cuts that token', async () => {
  const full = (await generate(engine(), request({ max_tokens: 30 }))).text;
  const at = full.indexOf(' ', 10) + 2; // two characters into a token
  const stop = full.slice(at, at + 3);
  const { text } = await generate(engine(), request({ max_tokens: 30, stop: [stop] }));
  expect(text).toBe(full.slice(0, full.indexOf(stop)));
});

test('synthetic - a stop sequence that began in text already sent never appears in the answer', async () => {
  const full = (await generate(engine(), request({ max_tokens: 30 }))).text;
  // Spans a token boundary: its start was streamed before its end was generated.
  const at = full.indexOf(' ', 10);
  const stop = full.slice(at - 2, at + 3);
  const { text, result } = await generate(engine(), request({ max_tokens: 30, stop: [stop] }));
  expect(text).not.toContain(stop);
  expect(full.startsWith(text)).toBe(true);
  // Nothing before the stop is lost; at most the part of the stop already sent remains.
  expect(text.length).toBeGreaterThanOrEqual(full.indexOf(stop));
  expect(text.length).toBeLessThan(full.indexOf(stop) + stop.length);
  expect(result.finishReason).toBe('stop');
});

test('synthetic - of several stop sequences the earliest in the text wins', async () => {
  const full = (await generate(engine(), request({ max_tokens: 30 }))).text;
  const words = full.split(' ');
  const early = words[3];
  const late = words[8];
  const { text } = await generate(engine(), request({ max_tokens: 30, stop: [' ' + late, ' ' + early] }));
  expect(text).toBe(full.slice(0, Math.min(full.indexOf(' ' + early), full.indexOf(' ' + late))));
});

test('synthetic - failRate 1 throws EngineError WORKER_ERROR before any text', async () => {
  const onText = jest.fn();
  const err = await engine({ failRate: 1 }).generate(request(), onText, new AbortController().signal).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EngineError);
  expect((err as EngineError).code).toBe('WORKER_ERROR');
  expect(onText).not.toHaveBeenCalled();
});

test('synthetic - failRate uses its random source: 0.5 fails below and answers at or above', async () => {
  await expect(engine({ failRate: 0.5, random: () => 0.49 }).generate(request(), () => undefined, new AbortController().signal)).rejects.toBeInstanceOf(EngineError);
  await expect(engine({ failRate: 0.5, random: () => 0.5 }).generate(request(), () => undefined, new AbortController().signal)).resolves.toMatchObject({ finishReason: 'stop' });
});

test('synthetic - abort stops generation mid-stream and rejects with the abort reason', async () => {
  const clock = new FakeClock();
  const e = engine({ tokenMs: 10 }, clock);
  const ac = new AbortController();
  const pieces: string[] = [];
  const done = e.generate(request({ max_tokens: 50 }), (t) => pieces.push(t), ac.signal).then(
    () => 'finished',
    (err: unknown) => err,
  );
  await clock.advance(10);
  await clock.advance(10);
  expect(pieces).toHaveLength(3);
  const reason = new Error('cancelled by the controller');
  ac.abort(reason);
  expect(await done).toBe(reason);
  expect(pieces).toHaveLength(3);
  expect(clock.pendingSleeps).toBe(0);
});

test('synthetic - abort during time to first token emits nothing', async () => {
  const clock = new FakeClock();
  const ac = new AbortController();
  const onText = jest.fn();
  const done = engine({ ttftMs: 100 }, clock).generate(request(), onText, ac.signal).then(
    () => 'finished',
    (err: unknown) => err,
  );
  await clock.advance(50);
  ac.abort('gone');
  expect(await done).toBe('gone');
  expect(onText).not.toHaveBeenCalled();
});

test('synthetic - an already aborted signal rejects at once', async () => {
  const ac = new AbortController();
  ac.abort('before start');
  const onText = jest.fn();
  await expect(engine().generate(request(), onText, ac.signal)).rejects.toBe('before start');
  expect(onText).not.toHaveBeenCalled();
});
