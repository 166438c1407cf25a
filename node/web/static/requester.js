// Requester pages: post a task (JSONL/CSV upload or a folder of images/audio), watch it fill,
// read the certified result, export it.
import { accountPicker, api, errorBox, fmt, h, nodeNow, onTick, serial, table, upload } from './lib.js';
import { histogram } from './charts.js';
import { renderItem } from './label.js';

const ITEMS_PAGE = 50;
const PLOT_ITEMS = 2000; // items read for the confidence/agreement plots

// ------------------------------------------------------------------ post + my tasks

export async function requesterHome(root) {
  const picker = await accountPicker(() => refresh(), 'requester');
  const out = h('div', { id: 'post-result' });
  const mine = h('div', { id: 'my-tasks' });
  const form = h('form', { id: 'post-form', class: 'form' },
    field('Title', h('input', { name: 'title', required: true, placeholder: 'What animal is in the picture?' })),
    field('Labels (comma-separated)', h('input', { name: 'labels', required: true, placeholder: 'cat, dog, bird' })),
    h('div', { class: 'row' },
      field('Domain', h('input', { name: 'domain', placeholder: 'animals' })),
      field('Redundancy', h('input', { name: 'redundancy', type: 'number', min: 1, max: 100, value: 3 })),
      field('Bounty (credits)', h('input', { name: 'bounty', type: 'number', min: 0, value: 1000 })),
      field('Deadline (minutes)', h('input', { name: 'minutes', type: 'number', min: 0.1, step: 'any', value: 60 }))),
    field('Items: a .jsonl file (one string or {"text": …} per line) or a .csv with a text column',
      h('input', { name: 'items', type: 'file', accept: '.jsonl,.json,.csv,.txt' })),
    field('…or a folder of images / audio (each file is one item, sent to this node as a blob)',
      h('input', { name: 'folder', type: 'file', webkitdirectory: true, multiple: true })),
    field('Gold answers, optional: CSV item,label (hidden until the deadline)',
      h('input', { name: 'gold', type: 'file', accept: '.csv' })),
    h('div', { class: 'row' }, h('label', { class: 'inline' }, 'Signed by ', picker.el),
      h('button', { type: 'submit', id: 'post' }, 'Post task')),
    h('div', { id: 'post-progress', class: 'muted' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const btn = form.querySelector('#post');
    btn.disabled = true;
    out.replaceChildren();
    try {
      const r = await postTask(form, picker.value());
      out.replaceChildren(h('div', { class: 'ok', role: 'status' }, `Task ${fmt.short(r.task_id, 12)} posted: ${fmt.int(r.items)} items, `,
        h('a', { href: `#/task/${r.task_id}`, id: 'posted-link' }, 'watch it fill →')));
      refresh();
    } catch (err) {
      out.replaceChildren(errorBox(err));
    } finally {
      btn.disabled = false;
      form.querySelector('#post-progress').textContent = '';
    }
  });
  root.append(h('h1', {}, 'Requester'), h('h2', {}, 'Post a task'), form, out, h('h2', {}, 'Tasks posted from this node'), mine);

  async function refresh() {
    try {
      const [{ accounts }, { tasks }] = await Promise.all([api('account_list'), api('tasks_list', { limit: 200 })]);
      const keys = new Map(accounts.map((a) => [a.public_key, a.name]));
      const rows = tasks.filter((t) => keys.has(t.requester)).map((t) => h('tr', {},
        h('td', {}, h('a', { href: `#/task/${t.task_id}` }, t.title || fmt.short(t.task_id, 12))),
        h('td', {}, keys.get(t.requester)), h('td', {}, statusPill(t.status)), h('td', {}, fmt.int(t.items)),
        h('td', {}, fmt.credits(t.bounty)), h('td', {}, fmt.countdown(t.deadline_ms - nodeNow()))));
      mine.replaceChildren(rows.length ? table(['task', 'by', 'status', 'items', 'bounty', 'deadline'], rows)
        : h('p', { class: 'muted' }, 'None yet.'));
    } catch (err) {
      mine.replaceChildren(errorBox(err));
    }
  }
  await refresh();
  return null;
}

function field(name, input) {
  return h('label', { class: 'field' }, h('span', {}, name), input);
}

async function postTask(form, account) {
  const f = new FormData(form);
  const labels = String(f.get('labels')).split(',').map((x) => x.trim()).filter(Boolean);
  if (labels.length < 2) throw new Error('give at least two labels, separated by commas');
  const progress = form.querySelector('#post-progress');
  let items;
  const folder = [...form.querySelector('[name=folder]').files].filter((x) => !x.name.startsWith('.'));
  const file = form.querySelector('[name=items]').files[0];
  if (folder.length) {
    folder.sort((a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name));
    items = [];
    for (const [k, x] of folder.entries()) {
      progress.textContent = `uploading ${k + 1} / ${folder.length}: ${x.name}`;
      items.push(await upload(x));
    }
  } else if (file) {
    items = parseItems(file.name, await file.text());
  } else {
    throw new Error('choose an items file or a folder');
  }
  const params = {
    account, title: String(f.get('title')), labels, items, domain: String(f.get('domain') || ''),
    redundancy: Number(f.get('redundancy')), bounty: Number(f.get('bounty')),
    duration_s: Math.round(Number(f.get('minutes')) * 60),
  };
  const gold = form.querySelector('[name=gold]').files[0];
  if (gold) params.gold = parseGold(await gold.text());
  progress.textContent = 'signing and storing the task…';
  return api('task_post', params);
}

// The same rules as `labelmesh task post FILE` (node/cli.py _read_items).
export function parseItems(name, text) {
  if (name.toLowerCase().endsWith('.csv')) {
    const rows = parseCsv(text);
    const col = rows.length ? rows[0].indexOf('text') : -1;
    if (col < 0) throw new Error(`${name}: a CSV item file needs a 'text' column`);
    const items = rows.slice(1).filter((r) => r.length > col).map((r) => ({ text: r[col] }));
    if (!items.length) throw new Error(`${name}: no items`);
    return items;
  }
  const items = [];
  text.split(/\r?\n/).forEach((line, n) => {
    if (!line.trim()) return;
    let v;
    try { v = JSON.parse(line); } catch (e) { throw new Error(`${name}:${n + 1}: not JSON (${e.message}); use one JSON object or string per line`); }
    items.push(typeof v === 'string' || (v && typeof v === 'object' && !Array.isArray(v)) ? v : String(v));
  });
  if (!items.length) throw new Error(`${name}: no items`);
  return items;
}

function parseGold(text) {
  const rows = parseCsv(text);
  const head = rows[0] || [];
  const ci = head.indexOf('item'), cl = head.indexOf('label');
  if (ci < 0 || cl < 0) throw new Error('gold CSV needs the header item,label');
  return rows.slice(1).filter((r) => r.length > Math.max(ci, cl)).map((r, n) => {
    const i = Number(r[ci]);
    if (!Number.isInteger(i)) throw new Error(`gold CSV line ${n + 2}: item must be an integer index`);
    return [i, r[cl]];
  });
}

// RFC 4180 CSV: quoted fields, doubled quotes, newlines inside quotes.
export function parseCsv(text) {
  const rows = [];
  let row = [], cell = '', quoted = false;
  for (let k = 0; k < text.length; k++) {
    const ch = text[k];
    if (quoted) {
      if (ch === '"' && text[k + 1] === '"') { cell += '"'; k++; }
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') { row.push(cell); cell = ''; }
    else if (ch === '\n' || ch === '\r') {
      if (ch === '\r' && text[k + 1] === '\n') k++;
      row.push(cell); rows.push(row); row = []; cell = '';
    } else cell += ch;
  }
  if (cell !== '' || row.length) { row.push(cell); rows.push(row); }
  return rows.filter((r) => r.length > 1 || r[0] !== '');
}

function statusPill(s) {
  return h('span', { class: `pill ${s}` }, s);
}

// ------------------------------------------------------------------ one task, live

export async function taskView(root, taskId) {
  let offset = 0;
  const head = h('div', { id: 'task-head' });
  const summary = h('div', { id: 'task-summary' });
  const fill = h('div', { id: 'fill' });
  const annotators = h('div', { id: 'annotators' });
  const plots = h('div', { class: 'plots', id: 'plots' });
  const items = h('div', { id: 'items' });
  const pager = h('div', { class: 'pager' },
    h('button', { type: 'button', id: 'prev-page', onclick: () => { offset = Math.max(0, offset - ITEMS_PAGE); refresh(); } }, '‹ previous'),
    h('span', { id: 'page-no' }),
    h('button', { type: 'button', id: 'next-page', onclick: () => { offset += ITEMS_PAGE; refresh(); } }, 'next ›'));
  const exports = h('div', { class: 'exports' }, 'Export: ',
    ['jsonl', 'csv', 'labelstudio'].map((f) => h('a', { class: 'button', href: `/export/${taskId}?format=${f}`, download: '', id: `export-${f}` },
      f === 'labelstudio' ? 'Label Studio' : f.toUpperCase())));
  root.append(head, summary, exports, h('h2', {}, 'Votes per item'), fill,
    h('h2', {}, 'Annotators'), annotators, h('h2', {}, 'Confidence and agreement'), plots,
    h('h2', {}, 'Items'), pager, items);

  let task = null;
  const refresh = serial(async () => {
    try {
      if (!task) {
        const first = await api('task_items', { task_id: taskId, limit: 1 });
        task = first;
      }
      const [c, page, full] = await Promise.all([
        api('consensus_get', { task_id: taskId, limit: ITEMS_PAGE, offset }),
        api('task_items', { task_id: taskId, offset, limit: ITEMS_PAGE }),
        api('consensus_get', { task_id: taskId, limit: PLOT_ITEMS }),
      ]);
      renderHead(c);
      renderSummary(c);
      renderFill(full);
      renderAnnotators(c);
      plots.replaceChildren(
        histogram(full.items.filter((x) => x.votes).map((x) => x.confidence_f), { title: 'confidence of the consensus label', id: 'plot-confidence' }),
        histogram(full.items.filter((x) => x.votes > 1).map((x) => x.agreement_f), { title: 'agreement between annotators per item', id: 'plot-agreement' }));
      if (full.items.length < task.total) plots.append(h('p', { class: 'muted' }, `first ${fmt.int(full.items.length)} items`));
      renderItems(c, page);
    } catch (err) {
      summary.replaceChildren(errorBox(err));
    }
  });

  function renderHead(c) {
    head.replaceChildren(h('h1', {}, task.title || 'Task'),
      h('div', { class: 'chips' }, statusPill(c.status === 'certified' ? 'certified' : c.task_status),
        h('span', { class: 'chip' }, `${fmt.int(task.total)} items`), h('span', { class: 'chip' }, `redundancy ${task.redundancy}`),
        h('span', { class: 'chip' }, fmt.credits(c.bounty)), task.domain ? h('span', { class: 'chip' }, task.domain) : null,
        h('span', { class: 'chip countdown', dataset: { deadline: task.deadline_ms } }, fmt.countdown(task.deadline_ms - nodeNow())),
        h('code', { class: 'chip', title: taskId }, fmt.short(taskId, 16))));
  }

  function renderSummary(c) {
    const cert = c.certificate;
    summary.replaceChildren(h('div', { class: 'kpis', dataset: { status: c.status } },
      kpiEl('status', c.status, 'k-status'), kpiEl('batches', fmt.int(c.batches), 'k-batches'),
      kpiEl('labels', fmt.int(c.labels), 'k-labels'), kpiEl("agreement (Krippendorff's α)", fmt.f(c.alpha_f), 'k-alpha'),
      kpiEl('refund', fmt.credits(c.refund), 'k-refund'),
      kpiEl('certificate', cert ? `round ${cert.round}, ${cert.signers.length} validators (${cert.weight}/${cert.total_weight})` : '–', 'k-cert')),
    h('div', { class: 'roots muted' }, 'set_root ', h('code', { id: 'k-set-root' }, c.set_root), ' · result_root ', h('code', { id: 'k-result-root' }, c.result_root)));
  }

  function renderFill(full) {
    const r = task.redundancy;
    const counts = new Array(r + 1).fill(0);
    for (const it of full.items) counts[Math.min(it.votes, r)] += 1;
    const n = full.items.length || 1;
    fill.replaceChildren(h('div', { class: 'fill-bar', title: 'items by votes received, against the redundancy wanted' },
      counts.map((k, v) => (k ? h('div', { class: `fill-seg v${Math.min(v, 5)} ${v >= r ? 'full' : ''}`, style: { flex: String(k) }, title: `${k} items with ${v}${v >= r ? '+' : ''} votes` },
        k / n > 0.06 ? `${v}${v >= r ? '+' : ''}: ${k}` : '') : null))),
    h('p', { class: 'muted', id: 'fill-text', dataset: { full: counts[r] } }, `${fmt.int(counts[r])} of ${fmt.int(full.items.length)} items have the ${r} votes wanted`));
  }

  function renderAnnotators(c) {
    const rows = c.annotators.map((a) => h('tr', { dataset: { account: a.account } },
      h('td', {}, h('code', { title: a.account }, fmt.short(a.account, 12))), h('td', { class: 'n-labels' }, fmt.int(a.labels)),
      h('td', { class: 'n-accuracy' }, fmt.f(a.accuracy_f)), h('td', { class: 'n-reward' }, fmt.int(a.reward))));
    annotators.replaceChildren(rows.length ? table(['annotator', 'labels', 'accuracy', 'reward (credits)'], rows, { id: 'annotator-table' })
      : h('p', { class: 'muted' }, 'No labels yet.'));
  }

  function renderItems(c, page) {
    document.getElementById('page-no').textContent = `items ${offset + 1}–${Math.min(offset + ITEMS_PAGE, task.total)} of ${fmt.int(task.total)}`;
    document.getElementById('prev-page').disabled = offset === 0;
    document.getElementById('next-page').disabled = offset + ITEMS_PAGE >= task.total;
    const rows = c.items.map((it, k) => h('tr', { dataset: { item: it.item } },
      h('td', {}, it.item + 1), h('td', { class: 'clip' }, page.items[k] ? preview(page.items[k]) : ''),
      h('td', { class: 'votes' }, h('meter', { min: 0, max: task.redundancy, value: Math.min(it.votes, task.redundancy) }), ` ${it.votes}/${task.redundancy}`),
      h('td', { class: 'label' }, it.label ?? '–'), h('td', { class: 'conf' }, it.votes ? fmt.f(it.confidence_f, 2) : '–'),
      h('td', { class: 'agree' }, it.votes > 1 ? fmt.f(it.agreement_f, 2) : '–')));
    items.replaceChildren(table(['#', 'item', 'votes', 'label', 'confidence', 'agreement'], rows, { id: 'item-table' }));
  }

  function preview(it) {
    if (it.data.kind === 'text') return it.data.text.slice(0, 140);
    if ((it.data.media_type || '').startsWith('image/')) return renderItem(taskId, it);
    return `${it.data.media_type} · ${fmt.int(it.data.size)} bytes`;
  }

  await refresh();
  let seen = null;
  const off = onTick((tick) => {
    const key = `${tick.tasks[taskId]}|${(tick.certified || []).includes(taskId)}|${tick.tasks_by_state.open}`;
    if (seen !== null && key !== seen) refresh();
    seen = key;
  });
  const clock = setInterval(() => {
    for (const el of root.querySelectorAll('[data-deadline]')) el.textContent = fmt.countdown(Number(el.dataset.deadline) - nodeNow());
  }, 1000);
  return () => { off(); clearInterval(clock); };
}

function kpiEl(name, value, id) {
  return h('div', { class: 'kpi' }, h('div', { class: 'kpi-v', id }, value), h('div', { class: 'kpi-n' }, name));
}
