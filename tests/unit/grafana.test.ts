/**
 * The Grafana board in docs/grafana/ must only query metrics the controller really exports, with
 * labels those metrics really have: a renamed metric would otherwise leave an empty panel.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { RouterMetrics, type MetricsSources } from '../../src/controller/metrics';

const board = JSON.parse(readFileSync(resolve(__dirname, '../../docs/grafana/mlx-router.json'), 'utf8'));
const sources = { registry: { online: () => [] }, breakers: { snapshot: () => [] }, pendingReplies: () => 0 } as unknown as MetricsSources;

test('grafana - every panel queries exported metrics by their real labels', async () => {
  const exported = new Map<string, Set<string>>();
  const register = new RouterMetrics(sources).register;
  for (const m of await register.getMetricsAsJSON()) {
    // Prometheus adds instance and job when it scrapes.
    const declared = (register.getSingleMetric(m.name) as unknown as { labelNames?: string[] }).labelNames ?? [];
    exported.set(m.name, new Set(['instance', 'job', ...declared]));
  }
  const exprs: string[] = board.panels.flatMap((p: any) => p.targets.map((t: any) => t.expr));
  expect(exprs.length).toBeGreaterThanOrEqual(13);
  const used = new Set<string>();
  for (const expr of exprs) {
    for (const [, name] of expr.matchAll(/(mlx_router_[a-z_]+?)(?:_bucket|_sum|_count)?[{[\s)]/g)) {
      expect(exported.has(name)).toBe(true);
      used.add(name);
    }
  }
  // The board covers the request, latency, breaker and leak metrics.
  for (const name of ['mlx_router_requests_total', 'mlx_router_request_duration_seconds', 'mlx_router_ttft_seconds', 'mlx_router_breaker_state', 'mlx_router_pending_replies']) {
    expect(used.has(name)).toBe(true);
  }
  // Labels in `by (...)` clauses exist on some metric of the expression.
  for (const expr of exprs) {
    const names = [...expr.matchAll(/(mlx_router_[a-z_]+?)(?:_bucket|_sum|_count)?[{[\s)]/g)].map((m) => m[1]);
    for (const [, list] of expr.matchAll(/by \(([^)]*)\)/g)) {
      for (const label of list.split(',').map((s) => s.trim())) {
        expect({ expr, label, known: names.some((n) => exported.get(n)!.has(label) || label === 'le') }).toMatchObject({ known: true });
      }
    }
  }
});
