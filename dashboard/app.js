// The mlx-router dashboard: reads GET /v1/cluster, /v1/cluster/workers and /v1/cluster/stats,
// follows GET /v1/cluster/events (server-sent events), and sends admin actions with the key the
// operator entered (kept in this tab's sessionStorage only). No dependencies, no build step.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = 'mlx-router.adminKey';
  const state = { workers: [], restarts: new Map(), adminKey: sessionStorage.getItem(KEY_STORE) || '' };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k.startsWith('data-')) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function showError(message) {
    const box = $('error');
    box.hidden = !message;
    box.textContent = message || '';
  }

  // With client API keys on (cluster.auth.keys), the cluster API needs a key marked admin: the
  // key entered below is sent with every read too.
  function authHeaders() {
    return state.adminKey ? { authorization: `Bearer ${state.adminKey}` } : {};
  }

  async function getJson(path) {
    const res = await fetch(path, { cache: 'no-store', headers: authHeaders() });
    if (res.status === 401 || res.status === 403) throw new Error(`${path}: HTTP ${res.status}: enter an admin key`);
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  const ms = (v) => (v === null || v === undefined ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
  const age = (v) => (v < 1000 ? `${v} ms` : `${(v / 1000).toFixed(1)} s`);

  function spark(svgId, values) {
    const svg = $(svgId);
    const nums = values.map((v) => (v === null || v === undefined ? 0 : v));
    const max = Math.max(1e-9, ...nums);
    const step = nums.length > 1 ? 120 / (nums.length - 1) : 120;
    const points = nums.map((v, i) => `${(i * step).toFixed(1)},${(29 - (v / max) * 27).toFixed(1)}`).join(' ');
    svg.replaceChildren();
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', points);
    svg.append(line);
  }

  function lastValue(series, key) {
    for (let i = series.length - 1; i >= 0; i--) if (series[i][key] !== null && series[i].requests > 0) return series[i][key];
    return null;
  }

  async function refreshStats() {
    const { series, bucketSeconds } = await getJson('/v1/cluster/stats?windowSeconds=300');
    // The newest bucket is still filling: rates come from the last complete one.
    const done = series.length > 1 ? series[series.length - 2] : series[0];
    $('v-rate').textContent = done ? (done.requests / bucketSeconds).toFixed(1) : '–';
    $('v-errors').textContent = done && done.requests > 0 ? `${((100 * done.errors) / done.requests).toFixed(1)} %` : '0 %';
    $('v-p50').textContent = ms(lastValue(series, 'p50Ms'));
    $('v-p99').textContent = ms(lastValue(series, 'p99Ms'));
    $('v-ttft').textContent = ms(lastValue(series, 'ttftP50Ms'));
    spark('s-rate', series.map((p) => p.requests / bucketSeconds));
    spark('s-errors', series.map((p) => p.errors));
    spark('s-p50', series.map((p) => p.p50Ms));
    spark('s-p99', series.map((p) => p.p99Ms));
    spark('s-ttft', series.map((p) => p.ttftP50Ms));
  }

  async function refreshCluster() {
    const c = await getJson('/v1/cluster');
    $('controller').textContent = `controller ${c.controller.id} · up ${c.controller.uptimeSeconds} s · v${c.controller.version}`;
    const nats = $('nats');
    nats.textContent = c.nats.connected ? 'NATS connected' : 'NATS disconnected';
    nats.className = `pill ${c.nats.connected ? 'ok' : 'bad'}`;
  }

  async function admin(path, label) {
    showError('');
    const res = await fetch(path, { method: 'POST', headers: { authorization: `Bearer ${state.adminKey}` } });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      showError(`${label}: ${(body.error && body.error.message) || `HTTP ${res.status}`}`);
      return;
    }
    await refreshWorkers();
  }

  function workerCard(w) {
    const breaker = w.breaker.state;
    const restarts = state.restarts.get(w.id) || 0;
    const next = w.breaker.next
      ? w.breaker.next.inMs !== undefined
        ? `→ ${w.breaker.next.to} in ${ms(w.breaker.next.inMs)}`
        : w.breaker.next.afterFailures !== undefined
          ? `opens after ${w.breaker.next.afterFailures} failures`
          : `closes after ${w.breaker.next.afterSuccesses} successes`
      : '';
    const errors = Object.entries(w.errors).map(([code, n]) => `${code} ${n}`).join(', ') || 'none';
    const used = w.slots.max > 0 ? Math.min(100, (100 * w.slots.inFlight) / w.slots.max) : 0;
    const actions = el('div', { class: 'actions' });
    if (state.adminKey) {
      const drained = w.state === 'draining';
      actions.append(
        el('button', { type: 'button', 'data-action': drained ? 'undrain' : 'drain', disabled: !w.online, onclick: () => admin(`/v1/cluster/workers/${encodeURIComponent(w.id)}/${drained ? 'undrain' : 'drain'}`, drained ? 'undrain' : 'drain') }, drained ? 'Undrain' : 'Drain'),
        el('button', { type: 'button', 'data-action': 'reset-breaker', disabled: breaker === 'closed' || breaker === 'disabled', onclick: () => admin(`/v1/cluster/workers/${encodeURIComponent(w.id)}/breaker/reset`, 'reset breaker') }, 'Reset breaker'),
      );
    }
    return el(
      'article',
      { class: `worker state-${w.state}`, 'data-worker': w.id, 'data-state': w.state },
      el(
        'div',
        { class: 'top' },
        el('span', { class: 'id' }, w.id),
        el('span', { class: `badge state-${w.state}` }, w.state),
        el('span', { class: `badge breaker-${breaker}`, title: next }, `breaker ${breaker}`),
        restarts > 0 ? el('span', { class: 'badge restarts', 'data-restarts': String(restarts) }, `restarted ${restarts}×`) : null,
      ),
      el(
        'dl',
        {},
        el('dt', {}, 'host'), el('dd', {}, `${w.host || '?'}${w.pid ? ` · pid ${w.pid}` : ''}`),
        el('dt', {}, 'models'), el('dd', { title: w.models.join(', ') }, w.models.join(', ') + (w.drainingModels.length ? ` (out: ${w.drainingModels.join(', ')})` : '')),
        el('dt', {}, 'slots'), el('dd', {}, `${w.slots.inFlight}/${w.slots.max} (ours ${w.slots.own}, others ${w.slots.others})`, el('div', { class: 'slots' }, el('div', { style: `width:${used}%` }))),
        el('dt', {}, 'TTFT · tok/s'), el('dd', {}, `${ms(w.ttftMs)} · ${w.tokensPerSecond ?? '–'}`),
        el('dt', {}, 'latency'), el('dd', {}, ms(w.latencyMs || null)),
        el('dt', {}, 'breaker'), el('dd', {}, next || breaker),
        el('dt', {}, 'errors'), el('dd', { title: errors }, errors),
        el('dt', {}, 'heartbeat'), el('dd', {}, `${age(w.lastHeartbeatAgeMs)} ago`),
      ),
      actions,
    );
  }

  function renderWorkers() {
    const box = $('workers');
    box.replaceChildren(...state.workers.map(workerCard));
    $('no-workers').hidden = state.workers.length > 0;
    const online = state.workers.filter((w) => w.online).length;
    $('worker-count').textContent = `${online} online of ${state.workers.length}`;
  }

  async function refreshWorkers() {
    state.workers = (await getJson('/v1/cluster/workers')).data;
    renderWorkers();
  }

  function describe(e) {
    switch (e.type) {
      case 'worker.up': return `${e.worker} online`;
      case 'worker.down': return `${e.worker} offline (${e.reason})`;
      case 'worker.state': return `${e.worker} is ${e.state}`;
      case 'worker.restart': return `${e.worker} restarted by up (#${e.restarts}, after ${e.exit}, backoff ${ms(e.backoffMs)})`;
      case 'breaker': return `${e.worker}: ${e.from} → ${e.to}`;
      case 'retry': return `${e.requestId} attempt ${e.attempt} after ${e.code || 'failure'} on ${e.worker || '?'}`;
      case 'resume': return `${e.requestId} stream resumed (attempt ${e.attempt}) after ${e.code || 'failure'} on ${e.worker || '?'}`;
      case 'shed': return `${e.requestId} refused: ${e.code}`;
      case 'admin': return `${e.action} ${e.target}: ${e.result}`;
      default: return JSON.stringify(e);
    }
  }

  function addEvent(e) {
    const list = $('events');
    const time = new Date(e.time).toLocaleTimeString();
    list.prepend(el('li', { class: `t-${e.type.replace('.', '-')}`, 'data-type': e.type }, el('time', {}, time), el('span', { class: 'type' }, e.type), describe(e)));
    while (list.children.length > 200) list.lastElementChild.remove();
  }

  function onEvent(e) {
    addEvent(e);
    if (e.type === 'worker.restart') state.restarts.set(e.worker, e.restarts);
    if (e.type === 'worker.down') {
      // Red at once; the next poll fills in the rest.
      const w = state.workers.find((x) => x.id === e.worker);
      if (w) {
        w.online = false;
        w.state = 'offline';
        renderWorkers();
      }
    }
    if (e.type.startsWith('worker.') || e.type === 'breaker' || e.type === 'admin') refreshWorkers().catch(() => undefined);
  }

  const TYPES = ['worker.up', 'worker.down', 'worker.state', 'worker.restart', 'breaker', 'retry', 'resume', 'shed', 'admin'];
  let feed = null;

  function feedStatus(live) {
    const status = $('feed-status');
    status.textContent = live ? 'events live' : 'events reconnecting';
    status.className = `pill ${live ? 'ok' : 'bad'}`;
  }

  // Without a key, EventSource; with one, fetch (EventSource cannot send a header), read as SSE.
  function follow() {
    if (feed) feed.close();
    if (!state.adminKey) {
      const source = new EventSource('/v1/cluster/events');
      for (const t of TYPES) source.addEventListener(t, (m) => onEvent(JSON.parse(m.data)));
      source.onopen = () => feedStatus(true);
      source.onerror = () => feedStatus(false);
      feed = source;
      return;
    }
    const abort = new AbortController();
    let closed = false;
    feed = { close: () => { closed = true; abort.abort(); } };
    (async () => {
      while (!closed) {
        try {
          const res = await fetch('/v1/cluster/events', { headers: authHeaders(), signal: abort.signal });
          if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
          feedStatus(true);
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          let pending = '';
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            pending += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = pending.indexOf('\n\n')) >= 0) {
              const block = pending.slice(0, cut);
              pending = pending.slice(cut + 2);
              let type = 'message';
              const data = [];
              for (const line of block.split('\n')) {
                if (line.startsWith('event: ')) type = line.slice(7);
                else if (line.startsWith('data: ')) data.push(line.slice(6));
              }
              if (TYPES.includes(type) && data.length > 0) onEvent(JSON.parse(data.join('\n')));
            }
          }
        } catch {
          if (closed) return;
        }
        feedStatus(false);
        await new Promise((r) => setTimeout(r, 2000));
      }
    })();
  }

  function setKey(key) {
    state.adminKey = key;
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    $('admin-key').hidden = Boolean(key);
    $('admin-save').hidden = Boolean(key);
    $('admin-clear').hidden = !key;
    renderWorkers();
  }

  function changeKey(key) {
    setKey(key);
    follow();
    tick(refreshCluster);
    tick(refreshWorkers);
    tick(refreshStats);
  }

  $('admin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    changeKey($('admin-key').value.trim());
    $('admin-key').value = '';
  });
  $('admin-clear').addEventListener('click', () => changeKey(''));

  async function tick(fn) {
    try {
      await fn();
      showError('');
    } catch (err) {
      showError(`cannot reach the controller: ${err.message}`);
    }
  }

  setKey(state.adminKey);
  follow();
  tick(refreshCluster);
  tick(refreshWorkers);
  tick(refreshStats);
  setInterval(() => tick(refreshWorkers), 1000);
  setInterval(() => tick(refreshStats), 2000);
  setInterval(() => tick(refreshCluster), 5000);
})();
