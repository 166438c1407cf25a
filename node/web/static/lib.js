// Shared helpers of the pages: calls to the node, DOM building, formats, live events.
// Everything comes from this node: no CDN, no third-party code.

const csrf = document.querySelector('meta[name="csrf"]').content;

export class ApiError extends Error {
  constructor(status, err) {
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.data = err.data;
  }
}

// Call an RPC method of the node (POST /api/METHOD); resolves to its result.
export async function api(method, params = {}, { keepalive = false } = {}) {
  let r;
  try {
    r = await fetch(`/api/${method}`, {
      method: 'POST', credentials: 'same-origin', keepalive,
      headers: { 'content-type': 'application/json', 'x-labelmesh-csrf': csrf },
      body: JSON.stringify(params),
    });
  } catch (e) {
    throw new ApiError(0, { code: 0, message: `the node is not reachable (${e.message})` });
  }
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  if (!r.ok || !body || body.error) {
    throw new ApiError(r.status, (body && body.error) || { code: r.status, message: `HTTP ${r.status}` });
  }
  return body.result;
}

// Store a file on the node as a blob (POST /upload): {sha256, size, media_type}.
export async function upload(file) {
  const type = file.type || 'application/octet-stream';
  const r = await fetch(`/upload?media_type=${encodeURIComponent(type)}`, {
    method: 'POST', credentials: 'same-origin', body: file,
    headers: { 'content-type': type, 'x-labelmesh-csrf': csrf },
  });
  const body = await r.json().catch(() => null);
  if (!r.ok || !body || body.error) throw new ApiError(r.status, (body && body.error) || { message: `HTTP ${r.status}` });
  return body.result;
}

// h('div', {class: 'x', onclick: fn}, 'text', child, [more]) -> element
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v); // CSSOM: allowed by the page's CSP, style="" is not
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export const fmt = {
  int: (n) => (n ?? 0).toLocaleString('en-US'),
  credits: (n) => `${(n ?? 0).toLocaleString('en-US')} cr`,
  f: (x, d = 3) => (x === null || x === undefined ? '–' : Number(x).toFixed(d)),
  pct: (x) => (x === null || x === undefined ? '–' : `${(100 * x).toFixed(1)}%`),
  short: (hex, n = 8) => (hex ? `${hex.slice(0, n)}…` : '–'),
  countdown(ms) {
    if (ms <= 0) return 'closed';
    const s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
    if (d) return `${d}d ${hh}h left`;
    if (hh) return `${hh}h ${String(mm).padStart(2, '0')}m left`;
    return `${mm}:${String(ss).padStart(2, '0')} left`;
  },
  age(s) {
    if (s === null || s === undefined) return 'never';
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  },
};

// The node's clock minus ours (ms), from the last event tick: countdowns use the node's time.
let skew = 0;
export const nodeNow = () => Date.now() + skew;

// Live updates: one EventSource per page, shared by every view.
let source = null;
let lastTick = null;
const listeners = new Set();

export function onTick(fn) {
  listeners.add(fn);
  if (!source) openEvents();
  if (lastTick) fn(lastTick);
  return () => listeners.delete(fn);
}

function openEvents() {
  source = new EventSource('/api/events');
  const live = document.getElementById('live');
  source.addEventListener('tick', (e) => {
    lastTick = JSON.parse(e.data);
    skew = lastTick.time_ms - Date.now();
    live.className = 'live on';
    live.title = 'live: updates stream from the node';
    for (const fn of [...listeners]) {
      try { fn(lastTick); } catch (err) { console.error(err); }
    }
  });
  source.onerror = () => {
    live.className = 'live off';
    live.title = 'not connected to the node (it may have restarted: run `labelmesh ui` for the new URL)';
  };
}

// Run fn at most once at a time; calls while it runs collapse into one more run after it.
export function serial(fn) {
  let running = null, again = false;
  const run = async () => {
    if (running) { again = true; return running; }
    running = (async () => {
      try {
        do { again = false; await fn(); } while (again);
      } finally { running = null; }
    })();
    return running;
  };
  return run;
}

export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

const ACCOUNT_KEY = 'labelmesh.account';
export const savedAccount = () => localStorage.getItem(ACCOUNT_KEY);
export const saveAccount = (name) => localStorage.setItem(ACCOUNT_KEY, name);

// <select> of the node's accounts (names; keys never leave the node).
export async function accountPicker(onchange, preferred) {
  const { accounts } = await api('account_list');
  const sel = h('select', { id: 'account', 'aria-label': 'account' },
    accounts.map((a) => h('option', { value: a.name, text: a.name })));
  const want = preferred && accounts.some((a) => a.name === preferred) ? preferred
    : (savedAccount() && accounts.some((a) => a.name === savedAccount()) ? savedAccount() : accounts[0]?.name);
  if (want) sel.value = want;
  sel.addEventListener('change', () => { saveAccount(sel.value); onchange(sel.value); });
  return { el: sel, accounts, value: () => sel.value };
}

export function table(headers, rows, attrs = {}) {
  return h('div', { class: 'scroll' }, h('table', attrs,
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows)));
}
