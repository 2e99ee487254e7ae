/**
 * A custom middleware for cluster.pipeline (docs/middleware.md, "Writing your own").
 *
 * It times what runs below it and keeps one record per run in `ctx.state.timings`, then writes a
 * debug log line with the request id (ctx.log is the request's pino child logger). Placed after
 * `retry` it runs once per attempt, so the records show each attempt and the worker it went to:
 *
 *   cluster:
 *     pipeline: [metrics, session, retry, breaker, select, ./docs/examples/custom-middleware.js, timeout, health]
 *
 * A module path starts with ./ ../ or / and is resolved from the folder of the config file. The
 * module is CommonJS and exports a factory `(config, deps) => middleware`, called once at start-up:
 * `config` is the whole validated configuration, `deps` the controller's shared objects (clock,
 * registry, breakers, ...). Time comes from `deps.clock`, so tests can run it on a fake clock.
 */
module.exports = function timing(config, deps) {
  return async function timing(ctx, next) {
    const started = deps.clock.now();
    let ok = false;
    try {
      await next();
      ok = true;
    } finally {
      const record = {
        attempt: ctx.attempt.number,
        worker: ctx.worker ? ctx.worker.id : null,
        ok,
        ms: deps.clock.now() - started,
      };
      const timings = Array.isArray(ctx.state.timings) ? ctx.state.timings : [];
      timings.push(record);
      ctx.state.timings = timings;
      ctx.log.debug(record, 'timing');
    }
  };
};
