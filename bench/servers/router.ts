/**
 * The router under test: Controller.start in this process with the default configuration (no
 * file, no environment), a silent log, any free port, and the scenario's overrides on top.
 */
import { loadConfig } from '../../src/config';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import type { Running } from './running';

export async function startRouter(natsUrl: string, overrides: Record<string, unknown>): Promise<Running> {
  const config = loadConfig({
    env: {},
    overrides: { 'nats.servers': [natsUrl], 'controller.host': '127.0.0.1', 'controller.port': 0, 'log.level': 'silent', ...overrides },
  });
  const controller = await Controller.start({ config, log: silentLogger() });
  return {
    url: controller.url,
    stats: () => ({ pendingReplies: controller.deps.mux.size, workersOnline: controller.deps.registry.online().length, workersIdle: controller.deps.registry.online().filter((w) => w.outstanding + w.foreignInFlight === 0).length }),
    stop: () => controller.stop(),
  };
}
