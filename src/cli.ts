#!/usr/bin/env node
/**
 * `mlx-router up | controller | worker | config`. Bad flags and bad configuration print one clear
 * message naming the flag or key and exit 2; a failure at run time exits 1.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError } from './config';
import { runController } from './commands/controller';
import { runUp } from './commands/up';
import { runWorker } from './commands/worker';
import { printConfig } from './commands/config';
import { runKeys } from './commands/keys';
import { numberFlag, UsageError, type Flags } from './flags';

export { numberFlag, UsageError, type Flags };

const USAGE = `mlx-router: route OpenAI-style requests over NATS to inference workers

Usage:
  mlx-router up [--workers N] [--controllers N] [--port P] [--nats URL|local] [--config FILE]
      a local cluster: NATS, N synthetic workers, the controller. Without --nats it uses the
      configured NATS, or starts nats-server when that does not answer; --nats URL must answer;
      --nats local always starts a private nats-server; --controllers N starts N controllers on
      consecutive ports from P, which agree on sessions
  mlx-router controller [--nats URL] [--port P] [--host H] [--config FILE]
  mlx-router worker [--nats URL] [--id ID] [--model NAME]... [--max-concurrent N]
                    [--ttft-ms N] [--token-ms N] [--fail-rate F] [--heartbeat-ms N] [--config FILE]
                    [--prompt-cache-size N] [--prefill-us-per-token N]
                    [--engine synthetic|openai] [--engine-url URL] [--engine-api-key KEY]
      --engine openai fronts an OpenAI-compatible server (mlx_lm.server, llama-server, vLLM, Ollama)
      at --engine-url (default http://127.0.0.1:8081/v1); without --model it advertises the models
      the server lists. See docs/engines.md.
  mlx-router config [--config FILE]     print every key, its value and its environment variable
  mlx-router keys create [--id ID] [--models a,b] [--rpm N] [--tpm N] [--concurrency N]
                         [--priority CLASS] [--admin]
      a new client API key, printed once, and its cluster.auth.keys entry (only the hash)

Configuration: ./cluster.yaml when present (or --config FILE), then MLX_ROUTER_* variables, then flags.
`;

const COMMON: ParseArgsConfig['options'] = {
  config: { type: 'string' },
  nats: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

const COMMANDS: Record<string, { options: ParseArgsConfig['options']; run: (flags: Flags, positionals: string[]) => Promise<number>; positionals?: boolean }> = {
  up: { options: { ...COMMON, workers: { type: 'string' }, controllers: { type: 'string' }, port: { type: 'string' } }, run: runUp },
  controller: { options: { ...COMMON, port: { type: 'string' }, host: { type: 'string' } }, run: runController },
  worker: {
    options: {
      ...COMMON,
      id: { type: 'string' },
      model: { type: 'string', multiple: true },
      'max-concurrent': { type: 'string' },
      'ttft-ms': { type: 'string' },
      'token-ms': { type: 'string' },
      'fail-rate': { type: 'string' },
      'prompt-cache-size': { type: 'string' },
      'prefill-us-per-token': { type: 'string' },
      'heartbeat-ms': { type: 'string' },
      engine: { type: 'string' },
      'engine-url': { type: 'string' },
      'engine-api-key': { type: 'string' },
    },
    run: runWorker,
  },
  config: { options: COMMON, run: printConfig },
  keys: {
    options: {
      help: { type: 'boolean', short: 'h' },
      id: { type: 'string' },
      models: { type: 'string' },
      rpm: { type: 'string' },
      tpm: { type: 'string' },
      concurrency: { type: 'string' },
      priority: { type: 'string' },
      admin: { type: 'boolean' },
    },
    run: runKeys,
    positionals: true,
  },
};


/** A one-line message for failures a user causes and can fix; undefined for real bugs. */
function runtimeMessage(e: Error & { code?: string; address?: string; port?: number }): string | undefined {
  if (e.code === 'EADDRINUSE') return `port ${e.port} on ${e.address} is already in use: pick another with --port`;
  if (e.code === 'EACCES' && e.port !== undefined) return `no permission to listen on port ${e.port}: pick one above 1023 with --port`;
  // nats.js connection failures (no server, refused, bad auth) carry their cause in the message.
  if (e.name === 'ConnectionError' || e.name === 'AuthorizationError' || e.code === 'ECONNREFUSED') return `cannot connect to NATS: ${e.message}`;
  return undefined;
}

export async function main(argv: string[]): Promise<number> {
  // `mlx-router config | head` closes the pipe early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command ? 0 : 2;
  }
  if (command === '--version') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    process.stdout.write(`${(require('../../package.json') as { version: string }).version}\n`);
    return 0;
  }
  const spec = COMMANDS[command];
  if (!spec) {
    process.stderr.write(`mlx-router: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  try {
    const { values, positionals } = parseArgs({ args: rest, options: spec.options, strict: true, allowPositionals: true });
    if (positionals.length > 0 && !spec.positionals) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    if ((values as Flags).help) {
      process.stdout.write(USAGE);
      return 0;
    }
    return await spec.run(values as Flags, positionals);
  } catch (err) {
    const e = err as Error & { code?: string };
    if (err instanceof UsageError || err instanceof ConfigError || e.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`mlx-router ${command}: ${e.message}\n`);
      return 2;
    }
    const known = runtimeMessage(e);
    process.stderr.write(`mlx-router ${command}: ${known ?? e.stack ?? e.message}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`mlx-router: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
