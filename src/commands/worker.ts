import { hostname } from 'node:os';
import { UsageError, numberFlag, type Flags } from '../flags';
import { systemClock } from '../clock';
import type { RouterConfig } from '../config';
import { createLogger, type Logger } from '../logger';
import { connectNats, drainWithin } from '../nats';
import { WORKER_ID_PATTERN } from '../protocol';
import type { Engine } from '../worker/engine';
import { openaiEngine } from '../worker/openai-engine';
import { syntheticEngineV2 } from '../worker/synthetic-structured';
import { Worker } from '../worker/worker';
import { configFromFlags, waitForSignal } from './shared';

/** The engine `worker.engine` names, started (an HTTP engine has probed once and read its models). */
async function startEngine(config: RouterConfig, log: Logger): Promise<Engine> {
  if (config.worker.engine === 'openai') {
    const o = config.worker.openai;
    const engine = openaiEngine({
      url: o.url,
      apiKey: o.apiKey,
      models: o.models,
      modelsRefreshMs: o.modelsRefreshMs,
      probeIntervalMs: o.probeIntervalMs,
      connectTimeoutMs: o.connectTimeoutMs,
      continuation: o.continuation,
      promptCacheSize: config.worker.promptCacheSize,
      log,
    });
    await engine.start();
    log.info({ engine: engine.url, healthy: engine.healthy(), models: engine.models() }, 'openai engine started');
    return engine;
  }
  const syn = config.worker.synthetic;
  return syntheticEngineV2({
    models: config.worker.models,
    ttftMs: syn.ttftMs,
    tokenMs: syn.tokenMs,
    failRate: syn.failRate,
    promptCacheSize: config.worker.promptCacheSize,
    prefillUsPerToken: syn.prefillUsPerToken,
    clock: systemClock,
  });
}

/**
 * Started by `mlx-router up` with an IPC channel: resolves when that parent goes away, so a
 * worker never outlives the cluster that started it. Never resolves for a standalone worker.
 */
function parentGone(): Promise<'parent-gone'> {
  if (!process.send) return new Promise(() => undefined);
  // The channel must not keep the worker alive once it has stopped; 'disconnect' still fires.
  process.channel?.unref();
  if (!process.connected) return Promise.resolve('parent-gone');
  return new Promise((resolve) => process.once('disconnect', () => resolve('parent-gone')));
}

/** `mlx-router worker`: one worker with the configured engine until SIGINT/SIGTERM. */
export async function runWorker(flags: Flags): Promise<number> {
  const overrides: Record<string, unknown> = {
    'worker.id': flags.id,
    // --model names the models of whichever engine is configured.
    'worker.models': flags.model,
    'worker.openai.models': flags.model,
    'worker.engine': flags.engine,
    'worker.openai.url': flags['engine-url'],
    'worker.openai.apiKey': flags['engine-api-key'],
    'worker.maxConcurrent': numberFlag(flags, 'max-concurrent', { min: 1 }),
    'worker.heartbeatIntervalMs': numberFlag(flags, 'heartbeat-ms', { min: 10 }),
    'worker.synthetic.ttftMs': numberFlag(flags, 'ttft-ms'),
    'worker.synthetic.tokenMs': numberFlag(flags, 'token-ms'),
    'worker.synthetic.failRate': numberFlag(flags, 'fail-rate', { max: 1, integer: false }),
    'worker.promptCacheSize': numberFlag(flags, 'prompt-cache-size'),
    'worker.synthetic.prefillUsPerToken': numberFlag(flags, 'prefill-us-per-token'),
  };
  const { config } = configFromFlags(flags, overrides);
  const id = config.worker.id || `${hostname().replace(/[^A-Za-z0-9_-]/g, '-')}-${process.pid}`.slice(-64);
  if (!WORKER_ID_PATTERN.test(id)) throw new UsageError(`--id must be 1 to 64 of [A-Za-z0-9_-], got '${id}'`);
  const log = createLogger('mlx-router-worker', config.log.level);
  const signal = waitForSignal();
  // Listen from the start: `up` may die while this worker is still connecting.
  const parent = parentGone();
  const nc = await connectNats(config.nats, `mlx-router-worker-${id}`).catch((err) => {
    signal.cancel();
    throw err;
  });
  let engine: Engine;
  try {
    engine = await startEngine(config, log);
  } catch (err) {
    signal.cancel();
    await nc.close();
    throw err;
  }
  // A controller refused this process: another live worker already has this id (docs/security.md).
  let onRefused: (message: string) => void = () => undefined;
  const refused = new Promise<{ refused: string }>((resolve) => (onRefused = (message) => resolve({ refused: message })));
  const worker = new Worker({
    onRefused: (message) => onRefused(message),
    nc,
    id,
    log,
    engine,
    maxConcurrent: config.worker.maxConcurrent,
    heartbeatIntervalMs: config.worker.heartbeatIntervalMs,
    progressIntervalMs: config.worker.progressIntervalMs,
    subjectPrefix: config.nats.subjectPrefix,
  });
  try {
    await worker.start();
  } catch (err) {
    // Nothing may keep the process alive after a failed start: it must exit non-zero.
    signal.cancel();
    await engine.close?.();
    await nc.close();
    throw err;
  }
  const ended = await Promise.race([signal.promise, nc.closed().then(() => 'nats-closed' as const), parent, refused]);
  signal.cancel();
  // A refusal may close the connection before it is reported: it is still a refusal (exit 3).
  const refusal = typeof ended === 'object' ? ended.refused : worker.refusedBecause;
  if (refusal !== undefined) {
    // The worker has stopped already (no bye believed for the live instance); say why and exit.
    process.stderr.write(`mlx-router worker: ${refusal}\n`);
    await engine.close?.();
    await drainWithin(nc);
    return 3;
  }
  if (ended === 'nats-closed') {
    log.error('NATS connection closed for good');
    await engine.close?.();
    return 1;
  }
  log.info({ signal: ended }, 'shutting down');
  await worker.stop();
  await engine.close?.();
  await drainWithin(nc);
  return 0;
}
