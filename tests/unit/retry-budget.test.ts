/** RetryBudget: the controller-wide token bucket that stops retries from multiplying an outage. */
import { RetryBudget } from '../../src/controller/retry-budget';

test('retry budget - starts full and allows retries', () => {
  const b = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  expect(b.available).toBe(10);
  expect(b.canRetry()).toBe(true);
});

test('retry budget - each failure takes one token; retries stop at half, not only at zero', () => {
  const b = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  for (let i = 0; i < 4; i++) b.onFailure();
  expect(b.available).toBe(6);
  expect(b.canRetry()).toBe(true);
  b.onFailure();
  expect(b.available).toBe(5);
  expect(b.canRetry()).toBe(false);
});

test('retry budget - never goes below zero however long the outage', () => {
  const b = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  for (let i = 0; i < 100; i++) b.onFailure();
  expect(b.available).toBe(0);
  // Recovery takes the same number of successes as from an exact zero.
  for (let i = 0; i < 51; i++) b.onSuccess();
  expect(b.canRetry()).toBe(true);
});

test('retry budget - each success gives back tokenRatio, up to maxTokens', () => {
  const b = new RetryBudget({ maxTokens: 10, tokenRatio: 0.25 });
  b.onFailure();
  b.onSuccess();
  expect(b.available).toBe(9.25);
  for (let i = 0; i < 10; i++) b.onSuccess();
  expect(b.available).toBe(10);
});

test('retry budget - successes reopen retries once more than half the tokens are back', () => {
  const b = new RetryBudget({ maxTokens: 10, tokenRatio: 0.5 });
  for (let i = 0; i < 10; i++) b.onFailure();
  const successesNeeded = (() => {
    let n = 0;
    while (!b.canRetry()) {
      b.onSuccess();
      n++;
    }
    return n;
  })();
  // 0 → 5.5 in steps of 0.5.
  expect(successesNeeded).toBe(11);
});
