import { dirname } from 'node:path';
import { numberFlag, type Flags } from '../flags';
import { Controller } from '../controller/controller';
import { createLogger } from '../logger';
import { configFromFlags, waitForSignal } from './shared';

/** `mlx-router controller`: the HTTP front and router until SIGINT/SIGTERM. */
export async function runController(flags: Flags): Promise<number> {
  const { config, file } = configFromFlags(flags, {
    'controller.port': numberFlag(flags, 'port', { max: 65535 }),
    'controller.host': flags.host,
  });
  const log = createLogger('mlx-router-controller', config.log.level);
  const signal = waitForSignal();
  let controller: Controller;
  try {
    controller = await Controller.start({ config, log, baseDir: file ? dirname(file) : process.cwd() });
  } catch (err) {
    signal.cancel();
    throw err;
  }
  const sig = await signal.promise;
  log.info({ signal: sig }, 'shutting down');
  await controller.stop();
  return 0;
}
