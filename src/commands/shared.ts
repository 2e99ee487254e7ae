import { defaultConfigFile, loadConfig, type RouterConfig } from '../config';
import type { Flags } from '../flags';

/** Loads config: --config FILE (or ./cluster.yaml), MLX_ROUTER_* variables, then flag overrides. */
export function configFromFlags(flags: Flags, overrides: Record<string, unknown> = {}): { config: RouterConfig; file?: string } {
  const file = typeof flags.config === 'string' ? flags.config : defaultConfigFile();
  const all: Record<string, unknown> = { ...overrides };
  if (typeof flags.nats === 'string') all['nats.servers'] = flags.nats.split(',').map((s) => s.trim()).filter(Boolean);
  return { config: loadConfig({ file, overrides: all }), file };
}

/** Resolves with the first SIGINT, SIGTERM or SIGHUP (a closed terminal), removing its listeners. */
export function waitForSignal(): { promise: Promise<NodeJS.Signals>; cancel: () => void } {
  let cancel = (): void => undefined;
  const promise = new Promise<NodeJS.Signals>((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      cancel();
      resolve(sig);
    };
    const onInt = (): void => on('SIGINT');
    const onTerm = (): void => on('SIGTERM');
    const onHup = (): void => on('SIGHUP');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    process.on('SIGHUP', onHup);
    cancel = () => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      process.off('SIGHUP', onHup);
    };
  });
  return { promise, cancel };
}
