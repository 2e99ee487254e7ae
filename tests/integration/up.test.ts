/**
 * `mlx-router up`, as a user runs it: a whole local cluster from one command, answering from
 * curl-like clients, and Ctrl-C (SIGINT to the process group) leaves no process behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import { dirname } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { startNatsServer } from '../../src/nats-server';
import { decode, makeSubjects, type Heartbeat } from '../../src/protocol';
import { CLI, MODEL, waitFor } from '../helpers/cluster';

function childrenOf(pid: number): number[] {
  const out = spawnSync('ps', ['-eo', 'pid=,ppid='], { encoding: 'utf8' }).stdout;
  return out
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter(([, ppid]) => ppid === pid)
    .map(([p]) => p);
}

/** Running (a zombie whose parent is gone, waiting for init to reap it, has stopped). */
function alive(pid: number): boolean {
  const stat = spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim();
  return stat !== '' && !stat.startsWith('Z');
}

/** A process in group `pgid` still exists (zombies included: nothing may be left at all). */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `mlx-router up` in its own process group, as a terminal runs it, with its own nats-server (`--nats local`). */
function startUp(workers: number, extra: string[] = [], nats = 'local') {
  const up = spawn(process.execPath, [CLI, 'up', '--nats', nats, '--port', '0', '--workers', String(workers), ...extra], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MLX_ROUTER_LOG_LEVEL: 'warn' },
  });
  let out = '';
  up.stdout.on('data', (d: Buffer) => (out += d.toString()));
  up.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => up.once('exit', (code) => resolve(code)));
  return {
    up,
    exited,
    output: () => out,
    /** The URL from the "is up" line, once the cluster is ready. */
    async ready(): Promise<string> {
      const url = await waitFor(() => /mlx-router is up: (http:\/\/[0-9.:]+)/.exec(out)?.[1], 'the "is up" line', 20_000);
      await waitFor(async () => (await fetch(`${url}/ready`)).status === 200, 'ready', 10_000);
      return url;
    },
    /** Ctrl-C: the terminal sends SIGINT to the whole foreground process group. */
    ctrlC: () => process.kill(-up.pid!, 'SIGINT'),
    async kill(): Promise<void> {
      if (up.exitCode === null && up.signalCode === null) process.kill(-up.pid!, 'SIGKILL');
      await exited;
    },
  };
}

test('up - starts nats-server, workers and the controller, answers, and Ctrl-C leaves nothing behind', async () => {
  const cluster = startUp(2);
  try {
    const url = await cluster.ready();
    expect(cluster.output()).toMatch(/curl .*\/v1\/chat\/completions/);
    const children = childrenOf(cluster.up.pid!);
    // nats-server and two workers.
    expect(children).toHaveLength(3);
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).choices[0].message.content.split(' ')).toHaveLength(3);
    cluster.ctrlC();
    expect(await cluster.exited).toBe(0);
    await waitFor(() => children.every((p) => !alive(p)), 'every child gone', 5000);
  } finally {
    await cluster.kill();
  }
}, 40_000);

test('up --controllers 2 - prints both controllers, which agree on every session, and Ctrl-C leaves nothing behind', async () => {
  const cluster = startUp(3, ['--controllers', '2']);
  try {
    await cluster.ready();
    const urls = await waitFor(() => /\(2 controllers: (http:\/\/[0-9.:]+) (http:\/\/[0-9.:]+)\)/.exec(cluster.output())?.slice(1), 'both URLs printed');
    expect(new Set(urls).size).toBe(2);
    // Rendezvous hashing agrees once both controllers know the same workers: wait for all three.
    for (const u of urls) {
      await waitFor(async () => ((await (await fetch(`${u}/ready`)).json()) as { workersOnline?: number }).workersOnline === 3, `${u} sees 3 workers`, 15_000);
    }
    const children = childrenOf(cluster.up.pid!);
    // nats-server and three workers; the controllers run inside up.
    expect(children).toHaveLength(4);
    for (let s = 0; s < 4; s++) {
      const seen = new Set<string>();
      for (let t = 0; t < 4; t++) {
        const res = await fetch(`${urls[t % 2]}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'x-session-id': `up-session-${s}` },
          body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
        });
        expect(res.status).toBe(200);
        seen.add(res.headers.get('x-mlx-worker') as string);
      }
      expect(seen.size).toBe(1);
    }
    cluster.ctrlC();
    expect(await cluster.exited).toBe(0);
    await waitFor(() => children.every((p) => !alive(p)), 'every child gone', 5000);
  } finally {
    await cluster.kill();
  }
}, 40_000);

test('up - Ctrl-C lets a running stream finish before the workers stop', async () => {
  const cluster = startUp(1);
  try {
    const url = await cluster.ready();
    // 300 tokens at 5 ms each: about 1.5 s of stream still to come when Ctrl-C arrives.
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'finish me' }], max_tokens: 300, stream: true }),
    });
    expect(res.status).toBe(200);
    const body = res.text();
    cluster.ctrlC();
    const text = await body;
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(text).not.toContain('event: error');
    expect(await cluster.exited).toBe(0);
  } finally {
    await cluster.kill();
  }
}, 40_000);

test('up - a worker started by up (IPC channel) stops by itself, exit 0, when up goes away', async () => {
  // What `up` does, with this test as the parent: when the channel closes (the parent died or let
  // go), the worker must drain and exit. Done here rather than by killing `up`, whose orphans this
  // sandbox's init would leave as zombies.
  const nats = await startNatsServer();
  const worker = spawn(process.execPath, [CLI, 'worker', '--nats', nats.url, '--id', 'ipc-w', '--heartbeat-ms', '100'], {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    env: { ...process.env, MLX_ROUTER_LOG_LEVEL: 'info' },
  });
  let out = '';
  worker.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => worker.once('exit', (code) => resolve(code)));
  try {
    await waitFor(() => out.includes('worker ready'), 'the worker ready');
    worker.disconnect();
    expect(await exited).toBe(0);
    expect(out).toMatch(/"signal":"parent-gone"/);
  } finally {
    if (worker.exitCode === null) worker.kill('SIGKILL');
    await exited;
    await nats.stop();
  }
});

test('up - a second Ctrl-C during a long drain forces the stop, still leaving nothing behind', async () => {
  const cluster = startUp(1);
  const abort = new AbortController();
  try {
    const url = await cluster.ready();
    const children = childrenOf(cluster.up.pid!);
    // A stream of 2,000 tokens at 5 ms each keeps the drain busy for about 10 s.
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'long' }], max_tokens: 2000, stream: true }),
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    // Keep reading, so the stream stays open and the drain has to wait for it.
    const reading = res.text().catch(() => 'cut');
    cluster.ctrlC();
    // The drain has begun once the controller stops taking new requests; then Ctrl-C again.
    await waitFor(
      async () => {
        try {
          return (await fetch(`${url}/health`)).status === 503;
        } catch {
          return true;
        }
      },
      'the drain to begin',
      10_000,
    );
    cluster.ctrlC();
    expect(await cluster.exited).toBe(130);
    await waitFor(() => children.every((p) => !alive(p)), 'every child gone', 5000);
    await reading;
  } finally {
    abort.abort();
    await cluster.kill();
  }
}, 40_000);

test('up - asked for a private NATS with no nats-server binary, it says how to install one and exits 1', async () => {
  // A PATH holding only node: no nats-server to start.
  const child = spawn(process.execPath, [CLI, 'up', '--nats', 'local', '--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: dirname(process.execPath), MLX_ROUTER_LOG_LEVEL: 'silent' },
  });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code).toBe(1);
  expect(err).toMatch(/apt-get install nats-server/);
  expect(err).toMatch(/brew install nats-server/);
});

test('up - an unreachable NATS the user named is a clear error and exit 1, not a private NATS started in its place', async () => {
  const child = spawn(process.execPath, [CLI, 'up', '--nats', 'nats://127.0.0.1:1', '--port', '0', '--workers', '1'], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MLX_ROUTER_LOG_LEVEL: 'info' },
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  // Its process group (it and anything it started) is empty once it has exited.
  const groupLeft = groupAlive(child.pid!);
  if (groupLeft) process.kill(-child.pid!, 'SIGKILL');
  expect(code).toBe(1);
  expect(err).toMatch(/^mlx-router up: cannot connect to NATS at nats:\/\/127\.0\.0\.1:1: /);
  expect(err).toMatch(/--nats local/);
  // Nothing was started: no nats-server, no workers, no controller.
  expect(out + err).not.toMatch(/started nats-server|mlx-router is up/);
  expect(groupLeft).toBe(false);
});

test('up - a bad flag exits 2 naming it', async () => {
  const r = spawnSync(process.execPath, [CLI, 'up', '--workers', 'many'], { encoding: 'utf8' });
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(/--workers/);
});

test('controller - an unreachable NATS is one clear line and exit 1, not a stack trace', () => {
  const r = spawnSync(process.execPath, [CLI, 'controller', '--nats', 'nats://127.0.0.1:1', '--port', '0'], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stderr.trim()).toBe('mlx-router controller: cannot connect to NATS: connection refused');
});

test('up - two clusters started on one NATS get distinct worker ids: neither refuses the other', async () => {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url });
  const ids = new Set<string>();
  nc.subscribe(makeSubjects().heartbeat, { callback: (_e, m) => void ids.add(decode<Heartbeat>(m.data)?.id ?? '') });
  await nc.flush();
  const one = startUp(2, [], nats.url);
  const two = startUp(2, [], nats.url);
  try {
    const urls = [await one.ready(), await two.ready()];
    await waitFor(() => ids.size >= 4, 'four distinct worker ids', 10_000);
    expect([...ids].every((id) => /^worker-[12]-[0-9a-f]{6}$/.test(id))).toBe(true);
    for (const url of urls) {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
      });
      expect(res.status).toBe(200);
    }
    expect(one.output() + two.output()).not.toMatch(/already served|refused/);
    one.ctrlC();
    two.ctrlC();
    expect(await one.exited).toBe(0);
    expect(await two.exited).toBe(0);
  } finally {
    await one.kill();
    await two.kill();
    await nc.close();
    await nats.stop();
  }
}, 60_000);
