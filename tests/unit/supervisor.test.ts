import { spawn } from 'node:child_process';
import { Supervisor, type RestartInfo } from '../../src/commands/supervisor';
import { waitFor } from '../helpers/cluster';

/** A child that exits with `code` after `ms`. */
const child = (code: number, ms = 0) => () => spawn(process.execPath, ['-e', `setTimeout(() => process.exit(${code}), ${ms})`], { stdio: 'ignore' });

test('supervisor - restarts a child that exits, with doubling backoff, and stops restarting on stop()', async () => {
  const restarts: RestartInfo[] = [];
  let spawned = 0;
  const s = new Supervisor({
    spawn: () => {
      spawned++;
      return child(3)();
    },
    initialBackoffMs: 20,
    maxBackoffMs: 50,
    onRestart: (info) => restarts.push(info),
  });
  s.start();
  await waitFor(() => restarts.length >= 3, 'three restarts');
  await s.stop(1000);
  expect(restarts.slice(0, 3)).toEqual([
    { restarts: 1, backoffMs: 20, exit: 'code 3' },
    { restarts: 2, backoffMs: 40, exit: 'code 3' },
    { restarts: 3, backoffMs: 50, exit: 'code 3' },
  ]);
  const after = spawned;
  await new Promise((r) => setTimeout(r, 150));
  expect(spawned).toBe(after);
});

test('supervisor - a child that stayed up long enough resets the backoff', async () => {
  const restarts: RestartInfo[] = [];
  const s = new Supervisor({ spawn: child(1, 60), initialBackoffMs: 10, resetAfterMs: 30, onRestart: (info) => restarts.push(info) });
  s.start();
  await waitFor(() => restarts.length >= 2, 'two restarts');
  await s.stop(1000);
  expect(restarts.slice(0, 2).map((r) => r.backoffMs)).toEqual([10, 10]);
});

test('supervisor - stop() terminates the running child and resolves once it exited', async () => {
  const s = new Supervisor({ spawn: () => spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' }) });
  s.start();
  const running = s.current()!;
  expect(running.pid).toEqual(expect.any(Number));
  await s.stop(2000);
  expect(running.signalCode).toBe('SIGTERM');
  expect(s.current()).toBeUndefined();
});
