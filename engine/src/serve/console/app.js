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

function askForKey(message) {
  $('key-form').hidden = false;
  $('overview').hidden = true;
  setText('key-error', message || '');
}

async function refresh() {
  try {
    const o = await api('/v1/overview');
    $('key-form').hidden = true;
    $('overview').hidden = false;
    drawOverview(o);
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

refresh();
setInterval(refresh, POLL_MS);
