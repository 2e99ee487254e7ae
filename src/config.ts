/**
 * Configuration: one convict schema, loaded from YAML, overridable per key by `MLX_ROUTER_*`
 * environment variables and then by CLI flags. Every key has a doc and a default; an unknown key
 * or a wrong type stops start-up with a message naming the key (ConfigError).
 */
import convict from 'convict';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { isErrorCode } from './errors';
import { checkKeyEntries, type ApiKeyEntry } from './api-keys';

convict.addParser({ extension: ['yml', 'yaml'], parse: parseYaml });
convict.addParser({ extension: 'json', parse: JSON.parse });

export const DEFAULT_MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';
export const DEFAULT_PIPELINE = ['metrics', 'limits', 'session', 'retry', 'hedge', 'breaker', 'priority', 'select', 'timeout', 'health'];
export const STRATEGIES = ['round-robin', 'least-outstanding', 'p2c'] as const;
export type Strategy = (typeof STRATEGIES)[number];
/** Engines a worker can front: `synthetic` (deterministic, built in) or `openai` (any OpenAI-compatible HTTP server). */
export const ENGINES = ['synthetic', 'openai'] as const;
export type EngineName = (typeof ENGINES)[number];

export interface RouterConfig {
  cluster: {
    pipeline: string[];
    requestRouting: {
      timeoutMs: number;
      streamingTimeoutMs: number;
      attemptTimeoutMs: number;
      firstChunkTimeoutMs: number;
      idleTimeoutMs: number;
      firstChunkMsPer1kPromptTokens: number;
      deadlineShare: number;
      adaptiveLimits: { enabled: boolean; factor: number; floorMs: number; minSamples: number };
      workerWaitTimeoutMs: number;
      strategy: Strategy;
      retry: {
        enabled: boolean;
        maxRetries: number;
        retryDelayMs: number;
        maxRetryDelayMs: number;
        minAttemptMs: number;
        retryOnErrors: string[];
        budget: { maxTokens: number; tokenRatio: number };
      };
      hedge: {
        enabled: boolean;
        percentile: number;
        minSamples: number;
        minDelayMs: number;
        initialDelayMs: number;
        budget: { ratio: number; maxTokens: number; minPerSecond: number };
      };
      circuitBreaker: {
        enabled: boolean;
        failureThreshold: number;
        successThreshold: number;
        timeoutMs: number;
        maxTimeoutMs: number;
        halfOpenPermits: number;
        peerOpenMs: number;
      };
      session: { ttlMs: number; maxSessions: number; sharedBucket: string; sharedReplicas: number };
      prefix: { minPrefixTokens: number; ttftMarginTokens: number; maxImbalance: number; defaultCacheSize: number };
    };
    maxTokens: { cap: number; byModel: Record<string, number> };
    streaming: { maxBufferedBytes: number; resume: boolean; maxResumes: number; maxResumeChars: number };
    admin: { key: string };
    auth: { keys: ApiKeyEntry[]; defaultPriority: string; priorityWeights: Record<string, number> };
  };
  nats: {
    servers: string[];
    randomize: boolean;
    subjectPrefix: string;
    inboxPrefix: string;
    user: string;
    pass: string;
    token: string;
    credsFile: string;
    nkeySeedFile: string;
    tls: { enabled: boolean; caFile: string; certFile: string; keyFile: string };
    reconnect: { enabled: boolean; maxAttempts: number; waitMs: number };
  };
  controller: {
    host: string;
    port: number;
    bodyLimitBytes: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    keepAliveTimeoutMs: number;
    maxConnections: number;
    maxConnectionsPerClient: number;
    stalledStreamTimeoutMs: number;
  };
  worker: {
    id: string;
    models: string[];
    maxConcurrent: number;
    heartbeatIntervalMs: number;
    progressIntervalMs: number;
    engine: EngineName;
    promptCacheSize: number;
    synthetic: { ttftMs: number; tokenMs: number; failRate: number; prefillUsPerToken: number };
    openai: {
      url: string;
      apiKey: string;
      models: string[];
      modelsRefreshMs: number;
      probeIntervalMs: number;
      connectTimeoutMs: number;
      continuation: 'off' | 'vllm' | 'prefill';
    };
  };
  discovery: { offlineAfterMs: number; probeAfterMs: number; maxWorkers: number; maxModels: number };
  tracing: { otlpEndpoint: string; serviceName: string };
  log: { level: string };
}

/** Raised for any bad configuration; the message names the key. The CLI exits 2 on it. */
export class ConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConfigError';
  }
}

/** `cluster.requestRouting.timeoutMs` → `MLX_ROUTER_CLUSTER_REQUEST_ROUTING_TIMEOUT_MS`. */
export function envName(path: string): string {
  return 'MLX_ROUTER_' + path.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/\./g, '_').toUpperCase();
}

const nonNegative = (name: string) => (v: unknown) => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`${name}: must be a number >= 0`);
};

convict.addFormat({
  name: 'string-list',
  validate(value: unknown) {
    if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v.length === 0)) {
      throw new Error('must be a list of non-empty strings');
    }
  },
  coerce: (v: string) => v.split(',').map((s) => s.trim()).filter(Boolean),
});

convict.addFormat({
  name: 'token-caps',
  validate(value: unknown) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('must be a map of model name to a positive integer');
    for (const [model, cap] of Object.entries(value)) {
      if (typeof cap !== 'number' || !Number.isInteger(cap) || cap < 1) throw new Error(`model '${model}': must be a positive integer`);
    }
  },
  coerce: (v: string) => JSON.parse(v) as unknown,
});

convict.addFormat({
  name: 'api-keys',
  validate(value: unknown) {
    const why = checkKeyEntries(value);
    if (why !== undefined) throw new Error(why);
  },
  coerce: (v: string) => JSON.parse(v) as unknown,
});

convict.addFormat({
  name: 'priority-weights',
  validate(value: unknown) {
    if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.keys(value).length === 0) {
      throw new Error('must be a map of priority class name to a positive whole weight');
    }
    for (const [name, w] of Object.entries(value)) {
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(name)) throw new Error(`class '${name}': names are 1-32 characters of [A-Za-z0-9_-]`);
      if (typeof w !== 'number' || !Number.isInteger(w) || w < 1 || w > 1000) throw new Error(`class '${name}': weight must be a whole number from 1 to 1000`);
    }
  },
  coerce: (v: string) => JSON.parse(v) as unknown,
});

convict.addFormat({
  name: 'ratio',
  validate(value: unknown) {
    if (typeof value !== 'number' || !(value >= 0 && value <= 1)) throw new Error('must be a number from 0 to 1');
  },
  coerce: Number,
});

// Each leaf: doc, format, default. `env` is added for every leaf by withEnv().
const schema = {
  cluster: {
    pipeline: {
      doc: 'Ordered middleware chain (names, or module paths starting with ./ ../ or /). The NATS dispatch always ends it.',
      format: 'string-list',
      default: DEFAULT_PIPELINE,
    },
    requestRouting: {
      timeoutMs: {
        doc: "Deadline of a whole buffered request, all attempts and backoff included (ms); the operator's cap, long enough for a slow engine's long answer.",
        format: 'nat',
        default: 300000,
      },
      streamingTimeoutMs: { doc: 'Deadline of a whole streamed request, all attempts included (ms).', format: 'nat', default: 300000 },
      attemptTimeoutMs: {
        doc: 'Last-resort limit of one attempt (ms), and the whole limit of a buffered attempt to a worker that sends no progress (protocol 1.0).',
        format: 'nat',
        default: 300000,
      },
      firstChunkTimeoutMs: {
        doc: 'Time to first token of one attempt, buffered or streamed (ms), for a short prompt; grows with firstChunkMsPer1kPromptTokens.',
        format: 'nat',
        default: 10000,
      },
      idleTimeoutMs: { doc: 'Longest silence between two tokens (stream chunks or progress messages) after the first (ms).', format: 'nat', default: 10000 },
      firstChunkMsPer1kPromptTokens: {
        doc: 'Extra time to first token allowed per 1000 prompt tokens (ms): long prompts take longer to read.',
        format: 'nat',
        default: 2000,
      },
      deadlineShare: {
        doc: "While retries remain, a time-to-first-token or idle limit uses at most this share of what the request has left, so a hung attempt leaves time for another.",
        format: 'ratio',
        default: 0.5,
      },
      adaptiveLimits: {
        enabled: {
          doc: 'Learn the time-to-first-token and idle limits per worker and model from recent successful attempts; the configured limits are the ceilings.',
          format: Boolean,
          default: true,
        },
        factor: { doc: "A learned limit is this many times the 99th percentile of the worker's recent observations.", format: Number, default: 4 },
        floorMs: { doc: 'No learned limit is shorter than this (ms).', format: 'nat', default: 1000 },
        minSamples: { doc: 'Successful attempts of a worker and model needed before its learned limits apply.', format: 'nat', default: 20 },
      },
      workerWaitTimeoutMs: {
        doc: 'When every worker for the model is busy, wait this long for a free one before 503 NO_WORKERS_AVAILABLE (ms; 0: no wait).',
        format: 'nat',
        default: 5000,
      },
      strategy: { doc: 'Worker selection: round-robin, least-outstanding or p2c.', format: [...STRATEGIES], default: 'least-outstanding' },
      retry: {
        enabled: { doc: 'Retry failed attempts on another worker.', format: Boolean, default: true },
        maxRetries: { doc: 'Retries after the first attempt.', format: 'nat', default: 2 },
        retryDelayMs: { doc: 'Base of the exponential backoff with full jitter (ms).', format: 'nat', default: 100 },
        maxRetryDelayMs: { doc: 'Cap of one backoff delay (ms).', format: 'nat', default: 1000 },
        minAttemptMs: { doc: 'No retry when the request has less than this left (ms).', format: 'nat', default: 50 },
        retryOnErrors: {
          doc: 'Error codes that may be retried (only retryable outcome classes ever are).',
          format: 'string-list',
          default: ['WORKER_UNAVAILABLE', 'WORKER_OVERLOADED', 'WORKER_TIMEOUT', 'WORKER_ERROR', 'NATS_DISCONNECTED'],
        },
        budget: {
          maxTokens: { doc: 'Retry budget size: a failed attempt takes a token (a refusal by a full worker does not); retries stop at half or below (0 turns retries off).', format: 'nat', default: 100 },
          tokenRatio: { doc: 'Tokens a successful request gives back to the retry budget.', format: 'ratio', default: 0.1 },
        },
      },
      hedge: {
        enabled: {
          doc: 'The hedge middleware: when an attempt shows no first token by the hedge point, start the same request on another worker; the first token wins and the other attempt is cancelled.',
          format: Boolean,
          default: true,
        },
        percentile: { doc: "The hedge point: this percentile (0 to 1) of the worker's recent times to first token for the model.", format: 'ratio', default: 0.95 },
        minSamples: { doc: 'Times to first token of a worker and model learned before its attempts are hedged.', format: 'nat', default: 20 },
        minDelayMs: { doc: 'The hedge point is never earlier than this after the worker was chosen (ms).', format: 'nat', default: 50 },
        initialDelayMs: { doc: "Hedge point of a worker whose times to first token are not learned yet (ms; 0: no hedge until they are).", format: 'nat', default: 0 },
        budget: {
          ratio: { doc: 'Hedge budget: each attempt adds this many tokens and a hedge takes one, so at most this share of attempts is hedged.', format: 'ratio', default: 0.05 },
          maxTokens: { doc: 'Hedge budget size, full at start: the largest burst of hedges.', format: 'nat', default: 10 },
          minPerSecond: { doc: 'Hedge tokens added per second whatever the traffic, so a quiet cluster may still hedge now and then.', format: Number, default: 0.1 },
        },
      },
      circuitBreaker: {
        enabled: { doc: 'Per-worker circuit breakers.', format: Boolean, default: true },
        failureThreshold: { doc: 'Consecutive counted failures that open a breaker.', format: 'nat', default: 5 },
        successThreshold: { doc: 'Half-open successes that close a breaker.', format: 'nat', default: 2 },
        timeoutMs: { doc: 'How long a breaker stays open after its first trip (ms); grows with repeated trips.', format: 'nat', default: 30000 },
        maxTimeoutMs: { doc: 'Cap of the open duration after repeated trips (ms).', format: 'nat', default: 300000 },
        halfOpenPermits: { doc: 'Probe requests admitted while half-open (at least 1; never unlimited).', format: 'nat', default: 1 },
        peerOpenMs: {
          doc: "When another controller opens its breaker for a worker, open this controller's (if closed) for this long, then probe by its own judgement (ms; 0 ignores peers).",
          format: 'nat',
          default: 5000,
        },
      },
      session: {
        ttlMs: { doc: 'How long an idle session keeps its worker (ms); refreshed on use.', format: 'nat', default: 600000 },
        maxSessions: { doc: 'Most sessions remembered; the least recently used is forgotten first.', format: 'nat', default: 10000 },
        sharedBucket: {
          doc: 'JetStream key-value bucket where controllers share session moves (failover, saturation); empty, or no JetStream: rendezvous hashing alone.',
          format: String,
          default: 'mlx_router_sessions',
        },
        sharedReplicas: { doc: 'Copies of the session bucket in a JetStream cluster (1, 3 or 5); 3 survives losing a NATS node.', format: 'nat', default: 1 },
      },
      prefix: {
        minPrefixTokens: { doc: 'prefix middleware: a predicted cached prefix shorter than this (tokens) counts as none, and so does a reported cached_tokens below it.', format: 'nat', default: 64 },
        ttftMarginTokens: {
          doc: "prefix middleware: leave the worker with the longest cached prefix when its predicted prefill work (queued + this prompt's uncached tokens) exceeds another candidate's by more than this (tokens).",
          format: 'nat',
          default: 256,
        },
        maxImbalance: { doc: 'prefix middleware: leave the worker with the longest cached prefix when it has this many more requests in flight than the least loaded candidate.', format: 'nat', default: 8 },
        defaultCacheSize: { doc: "prefix middleware: prompt cache entries assumed for a worker that does not advertise its cache size.", format: 'nat', default: 10 },
      },
    },
    maxTokens: {
      cap: {
        doc: 'Largest max_tokens a request may ask for (400 above it), for models not listed in cluster.maxTokens.byModel.',
        format: 'nat',
        default: 32768,
      },
      byModel: { doc: 'Per-model max_tokens caps, by model name (e.g. {"my-model": 8192}).', format: 'token-caps', default: {} },
    },
    streaming: {
      maxBufferedBytes: { doc: 'Bytes a slow streaming client may leave unread before the stream is cancelled.', format: 'nat', default: 1048576 },
      resume: {
        doc: 'When a stream breaks after its first chunk, continue it on another worker whose engine can continue a partial answer (needs retry in cluster.pipeline).',
        format: Boolean,
        default: true,
      },
      maxResumes: { doc: 'Resumes of one stream at most.', format: 'nat', default: 2 },
      maxResumeChars: {
        doc: 'Characters of a streamed answer kept for resume at most; a longer stream cannot be resumed, and its error says so.',
        format: 'nat',
        default: 262144,
      },
    },
    admin: {
      key: {
        doc: 'Bearer token of the admin actions (drain, undrain, breaker reset) of the cluster API; empty turns them off. Set it from the environment, at least 16 characters.',
        format: String,
        default: '',
        sensitive: true,
      },
    },
    auth: {
      keys: {
        doc: "Client API keys: a list of {id, hash, models, rpm, tpm, concurrency, priority, admin}; hash is sha256:<hex> of the key (mlx-router keys create), never the key. Empty: no keys needed (keep the controller on loopback then). See docs/security.md.",
        format: 'api-keys',
        default: [],
        // Not secret (hashes), but a plain key pasted by mistake must not be echoed in an error.
        sensitive: true,
      },
      defaultPriority: { doc: 'Priority class of a key that names none, and of every request while no keys are configured.', format: String, default: 'normal' },
      priorityWeights: {
        doc: 'Priority classes and their weights: when requests wait for a worker, each class gets free slots in proportion to its weight (smooth weighted round robin), so higher classes go first and no class starves.',
        format: 'priority-weights',
        default: { high: 6, normal: 3, low: 1 },
      },
    },
  },
  nats: {
    servers: { doc: 'NATS seed servers.', format: 'string-list', default: ['nats://127.0.0.1:4222'] },
    randomize: { doc: 'Try the seed servers in random order, spreading processes over a NATS cluster; false: in the order listed.', format: Boolean, default: true },
    subjectPrefix: { doc: 'Subject prefix of protocol v1.', format: String, default: 'mlx.v1' },
    inboxPrefix: { doc: "Prefix of this controller's reply subjects (subject tokens, no wildcards); give each controller its own, so NATS permissions can let only it read its replies (docs/security.md).", format: String, default: '_INBOX' },
    user: { doc: 'NATS user name (with pass).', format: String, default: '' },
    pass: { doc: 'NATS password.', format: String, default: '', sensitive: true },
    token: { doc: 'NATS auth token.', format: String, default: '', sensitive: true },
    credsFile: { doc: 'NATS credentials file (user JWT + NKey seed), for servers with decentralized JWT auth (an operator); see docs/security.md.', format: String, default: '' },
    nkeySeedFile: { doc: "File holding this process's NKey seed (SU...), for servers that list users by NKey public key; the seed signs the server's challenge and never leaves the machine.", format: String, default: '' },
    tls: {
      enabled: { doc: 'Require TLS to NATS.', format: Boolean, default: false },
      caFile: { doc: 'CA certificate file.', format: String, default: '' },
      certFile: { doc: 'Client certificate file.', format: String, default: '' },
      keyFile: { doc: 'Client key file.', format: String, default: '' },
    },
    reconnect: {
      enabled: { doc: 'Reconnect when the connection drops.', format: Boolean, default: true },
      maxAttempts: { doc: 'Reconnect attempts per server (-1: forever).', format: 'int', default: -1 },
      waitMs: { doc: 'Wait between reconnect attempts (ms).', format: 'nat', default: 1000 },
    },
  },
  controller: {
    host: { doc: 'HTTP listen address.', format: String, default: '127.0.0.1' },
    port: { doc: 'HTTP port (0: any free port).', format: 'port', default: 8080 },
    bodyLimitBytes: {
      doc: 'Largest request body accepted (bytes); larger gets 413. Bodies larger than one NATS message travel to v2 workers in parts.',
      format: 'nat',
      default: 16777216,
    },
    headersTimeoutMs: { doc: 'A client must send its request headers within this time of connecting or of its previous request (ms); else 408 and the socket closes.', format: 'nat', default: 10000 },
    requestTimeoutMs: { doc: 'A client must send its whole request, body included, within this time (ms); else 408 and the socket closes. At least headersTimeoutMs.', format: 'nat', default: 30000 },
    keepAliveTimeoutMs: { doc: 'An idle keep-alive connection closes after this long without a request (ms).', format: 'nat', default: 5000 },
    maxConnections: { doc: 'Open HTTP connections at most; beyond it a new connection gets 503 TOO_MANY_CONNECTIONS and is closed.', format: 'nat', default: 4096 },
    maxConnectionsPerClient: { doc: 'Open HTTP connections from one client address at most; beyond it 503 TOO_MANY_CONNECTIONS.', format: 'nat', default: 256 },
    stalledStreamTimeoutMs: { doc: 'A stream that has ended (or was cut for a client that stopped reading) but whose client still leaves it unread is closed after this long (ms), socket and buffer released.', format: 'nat', default: 10000 },
  },
  worker: {
    id: { doc: 'Worker id, one subject token ([A-Za-z0-9_-]); empty: hostname and pid.', format: String, default: '' },
    models: { doc: 'Models this worker serves (synthetic engine; the openai engine uses worker.openai.models).', format: 'string-list', default: [DEFAULT_MODEL] },
    maxConcurrent: { doc: 'Requests served at once; beyond it the worker answers WORKER_OVERLOADED.', format: 'nat', default: 8 },
    heartbeatIntervalMs: { doc: 'Heartbeat period (ms).', format: 'nat', default: 2000 },
    progressIntervalMs: {
      doc: 'Buffered requests: a progress message at the first token, then at most this often while tokens flow (ms).',
      format: 'nat',
      default: 250,
    },
    engine: { doc: 'Engine behind the worker: synthetic (built in) or openai (an OpenAI-compatible HTTP server, see docs/engines.md).', format: [...ENGINES], default: 'synthetic' },
    promptCacheSize: {
      doc: "Prompt cache entries (conversations) of the engine, advertised to controllers: the synthetic engine keeps this many; for the openai engine set it to the engine's own (mlx_lm.server --prompt-cache-size). 0: no cache.",
      format: 'nat',
      default: 10,
    },
    synthetic: {
      ttftMs: { doc: 'Synthetic engine: time to first token (ms).', format: 'nat', default: 20 },
      prefillUsPerToken: { doc: 'Synthetic engine: prefill time of one uncached prompt token (µs), one prompt at a time; adds to ttftMs.', format: 'nat', default: 0 },
      tokenMs: { doc: 'Synthetic engine: delay between tokens (ms).', format: 'nat', default: 5 },
      failRate: { doc: 'Synthetic engine: share of requests that fail before the first token.', format: 'ratio', default: 0 },
    },
    openai: {
      url: { doc: 'OpenAI engine: base URL, version path included (mlx_lm.server, llama-server, vLLM: .../v1; Ollama: http://127.0.0.1:11434/v1).', format: String, default: 'http://127.0.0.1:8081/v1' },
      apiKey: { doc: 'OpenAI engine: bearer token sent to the engine; empty sends none.', format: String, default: '', sensitive: true },
      models: { doc: 'OpenAI engine: models to advertise (--model); empty: the ids the engine lists at GET /models.', format: 'string-list', default: [] },
      modelsRefreshMs: { doc: 'OpenAI engine: how often the listed models are re-read from the engine, on a health probe (ms).', format: 'nat', default: 60000 },
      probeIntervalMs: { doc: 'OpenAI engine: period of the health probe, GET /models; while it fails the worker reports unhealthy (ms).', format: 'nat', default: 5000 },
      connectTimeoutMs: { doc: 'OpenAI engine: longest wait for the engine to answer a probe; slower counts as down (ms).', format: 'nat', default: 5000 },
      continuation: {
        doc: "OpenAI engine: stream resume, opt-in: 'vllm' (continue_final_message) or 'prefill' (a final assistant message); 'off' never takes resumes.",
        format: ['off', 'vllm', 'prefill'],
        default: 'off',
      },
    },
  },
  discovery: {
    offlineAfterMs: { doc: 'A worker silent this long (controller clock) is offline (ms); a controller silent this long is gone for the other controllers and the workers (its in-flight stops counting, workers cancel its attempts); controllers heartbeat every quarter of it, at most every second.', format: 'nat', default: 6000 },
    probeAfterMs: {
      doc: "Ask NATS whether a worker still listens (no responders: gone) when its heartbeat is this late, or an attempt on it has heard nothing this long (ms; 0: off).",
      format: 'nat',
      default: 300,
    },
    maxWorkers: { doc: 'Most worker ids the controller keeps; heartbeats of further new ids are dropped and counted.', format: 'nat', default: 1024 },
    maxModels: { doc: 'Most models one worker may advertise; a heartbeat with more is dropped and counted.', format: 'nat', default: 256 },
  },
  tracing: {
    otlpEndpoint: {
      doc: "OTLP/HTTP collector base URL (e.g. http://127.0.0.1:4318): the controller exports a span per request and per attempt to its /v1/traces; empty: no export (traceparent still propagates).",
      format: String,
      default: '',
    },
    serviceName: { doc: 'service.name of the exported spans.', format: String, default: 'mlx-router' },
  },
  log: {
    level: { doc: 'pino log level.', format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
  },
};

type SchemaNode = Record<string, unknown>;

function isLeaf(node: SchemaNode): boolean {
  return Object.prototype.hasOwnProperty.call(node, 'default') && Object.prototype.hasOwnProperty.call(node, 'doc');
}

function withEnv(node: SchemaNode, path: string[] = []): SchemaNode {
  if (isLeaf(node)) return { ...node, env: envName(path.join('.')) };
  const out: SchemaNode = {};
  for (const [key, child] of Object.entries(node)) out[key] = withEnv(child as SchemaNode, [...path, key]);
  return out;
}

const fullSchema = withEnv(schema as unknown as SchemaNode);

/** Every leaf key with its doc and default, for docs and `mlx-router config`. */
export function describeKeys(): Array<{ key: string; env: string; doc: string; default: unknown; sensitive: boolean }> {
  const out: Array<{ key: string; env: string; doc: string; default: unknown; sensitive: boolean }> = [];
  const walk = (node: SchemaNode, path: string[]): void => {
    if (isLeaf(node)) {
      out.push({ key: path.join('.'), env: node.env as string, doc: node.doc as string, default: node.default, sensitive: node.sensitive === true });
      return;
    }
    for (const [k, v] of Object.entries(node)) walk(v as SchemaNode, [...path, k]);
  };
  walk(fullSchema, []);
  return out;
}

export interface LoadOptions {
  /** Config file; only some keys need be present. */
  file?: string;
  /** Environment to read `MLX_ROUTER_*` from (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Overrides from CLI flags, by dotted key; applied last. */
  overrides?: Record<string, unknown>;
}

/**
 * Loads and validates the configuration: defaults, then the file, then the environment, then CLI
 * overrides. Throws ConfigError naming the bad key.
 */
export function loadConfig(options: LoadOptions = {}): RouterConfig {
  const config = convict(fullSchema as convict.Schema<RouterConfig>, {
    env: options.env ?? process.env,
    args: [],
  });
  try {
    if (options.file) {
      const file = resolve(options.file);
      if (!existsSync(file)) throw new ConfigError(`config file not found: ${file}`);
      config.loadFile(file);
    }
    for (const [key, value] of Object.entries(options.overrides ?? {})) {
      if (value !== undefined) config.set(key as never, value as never);
    }
    config.validate({ allowed: 'strict' });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`invalid configuration: ${(err as Error).message}`, { cause: err });
  }
  const cfg = config.getProperties() as RouterConfig;
  // convict merges maps into their defaults; the priority classes are exactly those configured.
  cfg.cluster.auth.priorityWeights = explicitValue(options, 'cluster.auth.priorityWeights') ?? cfg.cluster.auth.priorityWeights;
  checkSemantics(cfg);
  return cfg;
}

/** A map key's value as its highest-precedence source gives it (flag, environment, file), unmerged. */
function explicitValue<T>(options: LoadOptions, key: string): T | undefined {
  if (options.overrides?.[key] !== undefined) return options.overrides[key] as T;
  const env = (options.env ?? process.env)[envName(key)];
  if (env !== undefined) return JSON.parse(env) as T;
  if (options.file) {
    const file = resolve(options.file);
    const tree = (file.endsWith('.json') ? JSON.parse(readFileSync(file, 'utf8')) : parseYaml(readFileSync(file, 'utf8'))) as unknown;
    const value = key.split('.').reduce<unknown>((node, k) => (typeof node === 'object' && node !== null ? (node as Record<string, unknown>)[k] : undefined), tree);
    if (value !== undefined) return value as T;
  }
  return undefined;
}

/** Rules a type cannot say; each message names its key. */
function checkSemantics(cfg: RouterConfig): void {
  const rr = cfg.cluster.requestRouting;
  const fail = (key: string, why: string): never => {
    throw new ConfigError(`invalid configuration: ${key}: ${why}`);
  };
  if (rr.circuitBreaker.halfOpenPermits < 1) fail('cluster.requestRouting.circuitBreaker.halfOpenPermits', 'must be at least 1');
  if (rr.circuitBreaker.failureThreshold < 1) fail('cluster.requestRouting.circuitBreaker.failureThreshold', 'must be at least 1');
  if (rr.circuitBreaker.successThreshold < 1) fail('cluster.requestRouting.circuitBreaker.successThreshold', 'must be at least 1');
  if (rr.circuitBreaker.maxTimeoutMs < rr.circuitBreaker.timeoutMs) {
    fail('cluster.requestRouting.circuitBreaker.maxTimeoutMs', 'must be >= cluster.requestRouting.circuitBreaker.timeoutMs');
  }
  if (rr.retry.maxRetryDelayMs < rr.retry.retryDelayMs) {
    fail('cluster.requestRouting.retry.maxRetryDelayMs', 'must be >= cluster.requestRouting.retry.retryDelayMs');
  }
  if (rr.timeoutMs < 1) fail('cluster.requestRouting.timeoutMs', 'must be at least 1');
  if (!/^[A-Za-z0-9_-]*$/.test(rr.session.sharedBucket)) fail('cluster.requestRouting.session.sharedBucket', 'may hold only letters, digits, - and _');
  if (![1, 3, 5].includes(rr.session.sharedReplicas)) fail('cluster.requestRouting.session.sharedReplicas', 'must be 1, 3 or 5');
  for (const key of ['attemptTimeoutMs', 'firstChunkTimeoutMs', 'idleTimeoutMs'] as const) {
    if (rr[key] < 1) fail(`cluster.requestRouting.${key}`, 'must be at least 1 (every attempt would time out at once)');
  }
  const unknownCode = rr.retry.retryOnErrors.find((c) => !isErrorCode(c));
  if (unknownCode !== undefined) fail('cluster.requestRouting.retry.retryOnErrors', `unknown error code '${unknownCode}' (see docs/errors.md)`);
  if (cfg.cluster.streaming.maxBufferedBytes < 1024) fail('cluster.streaming.maxBufferedBytes', 'must be at least 1024 (smaller cancels streams at their first chunk)');
  if (!(rr.adaptiveLimits.factor >= 1)) fail('cluster.requestRouting.adaptiveLimits.factor', 'must be at least 1');
  if (rr.deadlineShare <= 0) fail('cluster.requestRouting.deadlineShare', 'must be above 0');
  if (!(rr.hedge.budget.minPerSecond >= 0)) fail('cluster.requestRouting.hedge.budget.minPerSecond', 'must be 0 or more');
  if (cfg.cluster.maxTokens.cap < 1) fail('cluster.maxTokens.cap', 'must be at least 1');
  if (rr.streamingTimeoutMs < 1) fail('cluster.requestRouting.streamingTimeoutMs', 'must be at least 1');
  if (cfg.cluster.pipeline.length === 0) fail('cluster.pipeline', 'must name at least one middleware');
  if (cfg.tracing.otlpEndpoint && !/^https?:\/\/[^/]/.test(cfg.tracing.otlpEndpoint)) fail('tracing.otlpEndpoint', `must be an http:// or https:// URL, got '${cfg.tracing.otlpEndpoint}'`);
  const adminKey = cfg.cluster.admin.key;
  if (adminKey.length > 0 && (adminKey.length < 16 || /\s/.test(adminKey))) fail('cluster.admin.key', 'must be at least 16 characters without spaces (or empty: admin actions off)');
  const auth = cfg.cluster.auth;
  if (!Object.hasOwn(auth.priorityWeights, auth.defaultPriority)) {
    fail('cluster.auth.defaultPriority', `'${auth.defaultPriority}' is not a class of cluster.auth.priorityWeights (${Object.keys(auth.priorityWeights).join(', ')})`);
  }
  for (const k of auth.keys) {
    if (k.priority !== undefined && !Object.hasOwn(auth.priorityWeights, k.priority)) {
      fail('cluster.auth.keys', `key '${k.id}': priority '${k.priority}' is not a class of cluster.auth.priorityWeights (${Object.keys(auth.priorityWeights).join(', ')})`);
    }
  }
  if (cfg.nats.servers.length === 0) fail('nats.servers', 'must list at least one server');
  if (cfg.worker.maxConcurrent < 1) fail('worker.maxConcurrent', 'must be at least 1');
  if (cfg.worker.heartbeatIntervalMs < 10) fail('worker.heartbeatIntervalMs', 'must be at least 10');
  if (cfg.discovery.offlineAfterMs <= cfg.worker.heartbeatIntervalMs) {
    fail('discovery.offlineAfterMs', 'must be longer than worker.heartbeatIntervalMs');
  }
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(cfg.nats.inboxPrefix)) fail('nats.inboxPrefix', `must be subject tokens of [A-Za-z0-9_-] without wildcards, got '${cfg.nats.inboxPrefix}'`);
  if (cfg.controller.headersTimeoutMs < 1) fail('controller.headersTimeoutMs', 'must be at least 1');
  if (cfg.controller.requestTimeoutMs < cfg.controller.headersTimeoutMs) fail('controller.requestTimeoutMs', 'must be at least controller.headersTimeoutMs');
  if (cfg.controller.maxConnections < 1) fail('controller.maxConnections', 'must be at least 1');
  if (cfg.controller.maxConnectionsPerClient < 1) fail('controller.maxConnectionsPerClient', 'must be at least 1');
  if (cfg.discovery.maxWorkers < 1) fail('discovery.maxWorkers', 'must be at least 1');
  if (cfg.discovery.maxModels < 1) fail('discovery.maxModels', 'must be at least 1');
  nonNegative('worker.synthetic.failRate')(cfg.worker.synthetic.failRate);
  const openai = cfg.worker.openai;
  if (!/^https?:\/\/[^/]/.test(openai.url)) fail('worker.openai.url', `must be an http:// or https:// URL, got '${openai.url}'`);
  if (openai.probeIntervalMs < 10) fail('worker.openai.probeIntervalMs', 'must be at least 10');
  if (openai.modelsRefreshMs < 10) fail('worker.openai.modelsRefreshMs', 'must be at least 10');
  if (openai.connectTimeoutMs < 1) fail('worker.openai.connectTimeoutMs', 'must be at least 1');
}

/** The config file used when none is named: ./cluster.yaml in the working directory, if any. */
export function defaultConfigFile(cwd: string = process.cwd()): string | undefined {
  const candidate = resolve(cwd, 'cluster.yaml');
  return existsSync(candidate) ? candidate : undefined;
}
