// The console: reads Sluice's JSON endpoints (docs/console.md) and draws
// them; nothing is sent anywhere else. With keys declared, an admin key is
// asked for once and kept in this tab (sessionStorage).
'use strict';

const POLL_MS = 5000;
const KEY = 'sluice-admin-key';
const $ = (id) => document.getElementById(id);

const usd = new Intl.NumberFormat('en-US', {style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 6});
const int = new Intl.NumberFormat('en-US');
const money = (micros) => usd.format(micros / 1e6);
const ms = (v) => (v === null || v === undefined) ? '–' : int.format(v) + ' ms';

async function api(path) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers['authorization'] = 'Bearer ' + key;
  const resp = await fetch(path, {headers});
  if (resp.status === 401 || resp.status === 403) {
    const body = await resp.json().catch(() => ({}));
    const err = new Error((body.error && body.error.message) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  if (!resp.ok) throw new Error(path + ': HTTP ' + resp.status);
  return resp.json();
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

// Budgets coloured by their alert thresholds: under the first, green;
// past one, amber; at or past the last (or the limit), red.
function budgetRow(b) {
  const tr = document.createElement('tr');
  tr.dataset.scope = b.scope;
  const pct = b.used_ppm / 10000;
  const alerts = b.alert_at_ppm || [];
  let level = '';
  if (b.used_ppm >= 1000000 || (alerts.length && b.used_ppm >= alerts[alerts.length - 1])) level = 'bad';
  else if (alerts.length && b.used_ppm >= alerts[0]) level = 'warn';
  const name = document.createElement('td');
  name.textContent = b.owner + ' (' + b.scope + ')';
  const period = document.createElement('td');
  period.textContent = b.period + ' ' + b.period_key;
  const bar = document.createElement('td');
  bar.innerHTML = '<div class="bar"><span></span><em></em></div>';
  bar.firstChild.className = 'bar ' + level;
  bar.querySelector('span').style.width = Math.min(pct, 100) + '%';
  bar.querySelector('em').textContent = pct.toFixed(pct < 10 ? 2 : 1) + '%';
  bar.querySelector('em').className = 'used-pct';
  const spent = document.createElement('td');
  spent.className = 'num';
  spent.textContent = money(b.spent_micros);
  const limit = document.createElement('td');
  limit.className = 'num';
  limit.textContent = money(b.limit_micros);
  tr.append(name, period, bar, spent, limit);
  return tr;
}

function drawOverview(o) {
  setText('day', o.day + ' (UTC)');
  setText('requests', int.format(o.requests));
  setText('errors', int.format(o.errors));
  setText('tokens', int.format(o.prompt_tokens) + ' / ' + int.format(o.completion_tokens));
  setText('cost', money(o.cost_micros));
  setText('ttft', ms(o.ttft_p50_ms) + ' / ' + ms(o.ttft_p95_ms));
  setText('streaming', int.format(o.streaming_now));
  const tbody = $('budgets').querySelector('tbody');
  tbody.replaceChildren(...o.budgets.map(budgetRow));
  $('budgets').hidden = o.budgets.length === 0;
  $('no-budgets').hidden = o.budgets.length !== 0;
  const alerts = $('alerts');
  alerts.replaceChildren(...o.alerts.map((a) => {
    const li = document.createElement('li');
    const at = new Date(a.fired_at_ms).toISOString().slice(11, 19);
    li.textContent = a.scope + ' passed ' + (a.threshold_ppm / 10000) + '% at ' + at + ' UTC' + (a.delivered ? '' : ' (not delivered yet)');
    return li;
  }));
  $('no-alerts').hidden = o.alerts.length !== 0;
}

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];
const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Cost per day over the range, stacked by group; the table below holds the
// groups' totals (the numbers of `sluice usage --by …` for those days).
function drawSpend(u) {
  setText('spend-range', u.from + ' to ' + u.to + ' (UTC)');
  const colour = new Map(u.groups.map((g, i) => [g.key, PALETTE[i % PALETTE.length]]));
  const days = [];
  for (let d = new Date(u.from + 'T00:00:00Z'); d <= new Date(u.to + 'T00:00:00Z'); d.setUTCDate(d.getUTCDate() + 1)) {
    days.push(d.toISOString().slice(0, 10));
  }
  const byDay = new Map(days.map((d) => [d, []]));
  for (const c of u.cells) if (byDay.has(c.day)) byDay.get(c.day).push(c);
  const top = Math.max(1, ...days.map((d) => byDay.get(d).reduce((s, c) => s + c.cost_micros, 0)));
  const chart = $('spend-chart');
  const [w, h, pad] = [900, 220, 18];
  const step = (w - 2 * pad) / days.length;
  const parts = [];
  days.forEach((d, i) => {
    let y = h - pad;
    for (const c of byDay.get(d)) {
      const bh = (c.cost_micros / top) * (h - 2 * pad);
      y -= bh;
      const r = svg('rect', {x: pad + i * step + 1, y, width: Math.max(step - 2, 1), height: bh, fill: colour.get(c.key)});
      const t = svg('title', {});
      t.textContent = d + ' ' + (c.key || 'all') + ': ' + money(c.cost_micros) + ', ' + int.format(c.requests) + ' requests';
      r.append(t);
      parts.push(r);
    }
  });
  const label = (x, y, text, anchor) => {
    const t = svg('text', {x, y, 'text-anchor': anchor});
    t.textContent = text;
    return t;
  };
  parts.push(label(pad, h - 4, days[0], 'start'), label(w - pad, h - 4, days[days.length - 1], 'end'), label(pad, 12, money(top) + ' a day at most', 'start'));
  chart.replaceChildren(...parts);
  const tbody = $('spend-table').querySelector('tbody');
  tbody.replaceChildren(...u.groups.map((g) => {
    const tr = document.createElement('tr');
    tr.dataset.group = g.key;
    const name = document.createElement('td');
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = colour.get(g.key);
    name.append(sw, document.createTextNode(g.key || 'all'));
    const cells = [int.format(g.requests), int.format(g.errors), int.format(g.prompt_tokens), int.format(g.completion_tokens), money(g.cost_micros)].map((v) => {
      const td = document.createElement('td');
      td.className = 'num';
      td.textContent = v;
      return td;
    });
    tr.append(name, ...cells);
    return tr;
  }));
  setText('spend-requests', int.format(u.total.requests));
  setText('spend-errors', int.format(u.total.errors));
  setText('spend-prompt', int.format(u.total.prompt_tokens));
  setText('spend-completion', int.format(u.total.completion_tokens));
  setText('spend-cost', money(u.total.cost_micros));
}

// The requests page's filters live in the hash (`#requests?status=ok`), so
// a filtered view can be linked to.
function hashQuery() {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q);
}

function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

const OK = new Set(['ok', 'ceiling', 'pending']);
const time = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19);

function requestRow(r) {
  const tr = document.createElement('tr');
  tr.className = 'row';
  tr.dataset.requestId = r.request_id;
  const est = r.estimated ? '~' : '';
  tr.append(
    cell(time(r.started_at_ms)),
    cell(r.request_id, 'rid'),
    cell(r.pipeline),
    cell(r.provider + '/' + r.model),
    cell(r.status, OK.has(r.status) ? 'status-ok' : 'status-error'),
    cell(est + int.format(r.prompt_tokens) + ' / ' + est + int.format(r.completion_tokens), 'num'),
    cell(money(r.cost_micros), 'num'),
    cell(ms(r.ttft_ms), 'num'),
    cell(ms(r.duration_ms), 'num'),
    cell(r.error_code || ''),
  );
  tr.children[1].title = r.request_id;
  tr.addEventListener('click', () => toggleDetails(tr, r.request_id));
  return tr;
}

// A row's details: every ledger row of its request id (retries and
// fallbacks each have one), with what the table leaves out.
async function toggleDetails(tr, id) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains('details')) return next.remove();
  const d = await api('/v1/requests/' + encodeURIComponent(id));
  const row = document.createElement('tr');
  row.className = 'details';
  const td = document.createElement('td');
  td.colSpan = 10;
  td.append(...d.rows.map((r) => {
    const p = document.createElement('div');
    p.textContent = 'row ' + r.id + ': ' + r.provider + '/' + r.model + ', ' + r.status +
      (r.error_code ? ' (' + r.error_code + ')' : '') + ', ' + r.tool_calls + ' tool calls, reserved ' +
      money(r.reserved_micros) + ', charged ' + money(r.cost_micros) +
      (r.cache_read_tokens ? ', ' + int.format(r.cache_read_tokens) + ' tokens from cache' : '') +
      (r.api_key ? ', key ' + r.api_key + (r.team ? ' (team ' + r.team + ')' : '') : '') +
      (r.usage_anomaly ? ', usage not believed: ' + r.usage_anomaly : '');
    return p;
  }));
  row.append(td);
  tr.after(row);
}

let older = null;
let paged = false;

async function loadRequests(more) {
  const q = hashQuery();
  const form = $('filters');
  for (const name of ['pipeline', 'model', 'status', 'since']) form.elements[name].value = q.get(name) || '';
  const params = new URLSearchParams();
  for (const [k, v] of q) if (v) params.set(k, v);
  params.set('limit', '50');
  if (more && older) params.set('before', older);
  const page = await api('/v1/requests?' + params);
  const tbody = $('request-table').querySelector('tbody');
  const rows = page.requests.map(requestRow);
  if (more) tbody.append(...rows);
  else tbody.replaceChildren(...rows);
  older = page.next;
  $('older').hidden = !older;
  $('no-requests').hidden = tbody.children.length !== 0;
}

$('filters').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($('filters'))) if (v.trim()) params.set(k, v.trim());
  const q = params.toString();
  location.hash = 'requests' + (q ? '?' + q : '');
});
$('older').addEventListener('click', () => {
  paged = true;
  loadRequests(true).catch((e) => setText('status', e.message));
});

function page() {
  const name = location.hash.slice(1).split('?')[0];
  return ['spend', 'requests'].includes(name) ? name : 'overview';
}

function askForKey(message) {
  $('key-form').hidden = false;
  for (const s of document.querySelectorAll('.page')) s.hidden = true;
  setText('key-error', message || '');
}

function show(name) {
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== name;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === name);
}

async function refresh() {
  try {
    const name = page();
    if (name === 'spend') {
      const u = await api('/v1/usage?days=' + $('spend-days').value + '&by=' + $('spend-by').value);
      drawSpend(u);
    } else if (name === 'requests') {
      // The first page follows new requests; older pages, and a row
      // whose details are open, stay put until the filters change.
      if (!paged && !document.querySelector('tr.details')) await loadRequests(false);
    } else {
      drawOverview(await api('/v1/overview'));
    }
    $('key-form').hidden = true;
    show(name);
    setText('status', 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC');
  } catch (e) {
    if (e.status === 401) return askForKey(sessionStorage.getItem(KEY) ? 'That key is not known.' : '');
    if (e.status === 403) return askForKey('That key is not an admin key.');
    setText('status', 'not updated: ' + e.message);
  }
}

$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $('key').value.trim());
  $('key').value = '';
  refresh();
});

for (const id of ['spend-days', 'spend-by']) $(id).addEventListener('change', refresh);
window.addEventListener('hashchange', () => {
  paged = false;
  for (const d of document.querySelectorAll('tr.details')) d.remove();
  refresh();
});
refresh();
setInterval(refresh, POLL_MS);
