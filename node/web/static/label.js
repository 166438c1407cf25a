// Labeling: pick an account, see open tasks with what is left for you, label one item at a
// time (click or number keys), skip, go back and change, undo. Labels wait a few seconds in
// the page (so they can still be changed) and go to the node as one signed batch.
import { ApiError, accountPicker, api, errorBox, fmt, h, nodeNow, onTick, saveAccount, table } from './lib.js';

const PAGE = 50;          // items fetched per call: a 10,000-item task is never loaded whole
const FLUSH_MS = 4000;    // a batch leaves at most this long after its first label...
const SLOW_FLUSH_MS = 30000; // ...or this long once half of the batch cap is used
const FLUSH_LABELS = 50;  // ...or as soon as it holds this many labels

// ------------------------------------------------------------------ the task list

export async function labelHome(root) {
  const list = h('div', { id: 'worklist' });
  const results = h('div', { id: 'my-results' });
  let account = null;
  let timer = null;
  const picker = await accountPicker((name) => { account = name; refresh(); });
  account = picker.value();
  root.append(
    h('h1', {}, 'Label'),
    h('p', { class: 'muted' }, 'Labels are signed by the node with the account you choose; its key never leaves the node.'),
    h('label', { class: 'inline' }, 'Account ', picker.el),
    h('h2', {}, 'Open tasks'), list,
    h('h2', {}, 'Your results (certified tasks)'), results);

  async function refresh() {
    if (!account) {
      list.replaceChildren(h('p', {}, 'This node has no account: create one with ', h('code', {}, 'labelmesh account new NAME'), '.'));
      return;
    }
    try {
      const wl = await api('worklist', { account, limit: 50 });
      const cards = wl.tasks.map((t) => h('a', { class: 'card task-card', href: `#/label/${t.task_id}`, dataset: { task: t.task_id } },
        h('div', { class: 'card-title' }, t.title || fmt.short(t.task_id, 12)),
        h('div', { class: 'chips' },
          h('span', { class: 'chip' }, t.domain || 'no domain'),
          h('span', { class: 'chip' }, fmt.credits(t.bounty)),
          h('span', { class: 'chip countdown', dataset: { deadline: t.deadline_ms } }, fmt.countdown(t.deadline_ms - nodeNow()))),
        h('div', { class: 'left' }, h('b', { class: 'items-left' }, fmt.int(t.items_left)), ` of ${fmt.int(t.items)} items left for you`),
        h('progress', { max: t.items, value: t.labelled })));
      list.replaceChildren(...(cards.length ? cards : [h('p', { class: 'muted' }, 'No open task right now.')]));
      const rw = await api('rewards_get', { account });
      results.replaceChildren(rw.rewards.length
        ? table(['task', 'labels', 'accuracy', 'reward'], rw.rewards.map((r) => h('tr', {},
          h('td', {}, h('a', { href: `#/label/${r.task_id}` }, fmt.short(r.task_id, 12))), h('td', {}, fmt.int(r.labels)),
          h('td', {}, fmt.pct(r.accuracy_f)), h('td', {}, fmt.credits(r.reward)))))
        : h('p', { class: 'muted' }, 'No certified task with your labels yet.'));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
  }

  await refresh();
  saveAccount(account);
  let seen = null;
  const off = onTick((t) => {  // a new task or a state change: refresh the list
    const key = JSON.stringify([Object.keys(t.tasks).length, t.tasks_by_state]);
    if (seen !== null && key !== seen) refresh();
    seen = key;
  });
  timer = setInterval(() => {
    for (const el of root.querySelectorAll('[data-deadline]')) el.textContent = fmt.countdown(Number(el.dataset.deadline) - nodeNow());
  }, 1000);
  return () => { off(); clearInterval(timer); };
}

// ------------------------------------------------------------------ one task

export async function labelTask(root, taskId) {
  const picker = await accountPicker(() => { location.reload(); });
  const account = picker.value();
  if (!account) {
    root.append(errorBox('This node has no account: create one with `labelmesh account new NAME`.'));
    return null;
  }
  const s = new Labeler(root, taskId, account, picker.el);
  await s.start();
  return () => s.stop();
}

class Labeler {
  constructor(root, taskId, account, pickerEl) {
    Object.assign(this, { root, taskId, account, pickerEl });
    this.pages = new Map();       // page offset -> items
    this.loading = new Map();     // page offset -> promise
    this.pending = new Map();     // item -> label name, not sent yet (can still change)
    this.sent = new Map();        // item -> label name, in a stored batch (signed: final)
    this.history = [];            // [{item, before}] for undo
    this.flushTimer = null;
    this.flushing = null;
    this.i = 0;
    this.batches = [];
  }

  async start() {
    const first = await api('task_items', { task_id: this.taskId, account: this.account, limit: PAGE });
    this.meta = first;
    this.pages.set(0, first.items);
    this.noteMine(first.items);
    this.labelled = first.labelled;
    this.build();
    if (first.status !== 'open') { await this.showResults(); return; }
    // start at the first item that still needs this account's label
    const todo = await api('task_items', { task_id: this.taskId, account: this.account, todo: true, limit: 1 });
    this.i = todo.items.length ? todo.items[0].item : this.meta.total;
    await this.show();
    this.keyHandler = (e) => this.onKey(e);
    document.addEventListener('keydown', this.keyHandler);
    this.leave = () => { if (document.visibilityState === 'hidden') this.flush(true); };
    document.addEventListener('visibilitychange', this.leave);
    this.pagehide = () => this.flush(true);
    window.addEventListener('pagehide', this.pagehide);
    this.clock = setInterval(() => this.tickClock(), 1000);
    // once the task is certified, this page turns into its results
    this.offTick = onTick((t) => {
      if (!this.resultsShown && (t.certified || []).includes(this.taskId)) this.toResults();
    });
  }

  async toResults() {
    this.resultsShown = true;
    await this.flush(true);
    document.removeEventListener('keydown', this.keyHandler);
    this.card.replaceChildren(h('div', { class: 'done' }, h('h2', {}, 'This task is certified.'), h('p', {}, 'Your labels against the consensus:')));
    await this.showResults();
  }

  async stop() {
    if (this.offTick) this.offTick();
    document.removeEventListener('keydown', this.keyHandler);
    document.removeEventListener('visibilitychange', this.leave);
    window.removeEventListener('pagehide', this.pagehide);
    clearInterval(this.clock);
    await this.flush(true);
  }

  noteMine(items) {
    for (const it of items) if (it.mine !== null && !this.pending.has(it.item)) this.sent.set(it.item, it.mine);
  }

  build() {
    const m = this.meta;
    this.counter = h('span', { id: 'progress-text' });
    this.bar = h('progress', { id: 'progress', max: m.total, value: 0 });
    this.countdown = h('span', { class: 'chip countdown' });
    this.card = h('div', { class: 'item-card', id: 'item' });
    this.buttons = h('div', { class: 'label-buttons', id: 'labels' }, m.labels.map((name, k) =>
      h('button', { type: 'button', class: 'label-btn', dataset: { label: name }, onclick: () => this.label(name) },
        h('kbd', {}, k < 9 ? String(k + 1) : ''), ' ', name)));
    this.status = h('div', { id: 'batch-status', class: 'status', role: 'status' });
    this.note = h('div', { id: 'note', class: 'note' });
    this.root.append(
      h('div', { class: 'task-head' },
        h('h1', {}, h('a', { href: '#/label', class: 'back', title: 'all tasks' }, '‹'), ' ', m.title || 'Task'),
        h('div', { class: 'chips' }, h('label', { class: 'inline' }, 'Account ', this.pickerEl),
          h('span', { class: 'chip' }, `${fmt.int(m.total)} items`), h('span', { class: 'chip' }, `redundancy ${m.redundancy}`),
          this.countdown)),
      h('div', { class: 'progress-row' }, this.bar, this.counter),
      this.card, this.note, this.buttons,
      h('div', { class: 'controls' },
        h('button', { type: 'button', id: 'back', onclick: () => this.go(this.i - 1), title: '← or B' }, '← Back'),
        h('button', { type: 'button', id: 'skip', onclick: () => this.go(this.i + 1), title: '→ or S' }, 'Skip →'),
        h('button', { type: 'button', id: 'undo', onclick: () => this.undo(), title: 'U or Ctrl+Z' }, 'Undo'),
        h('button', { type: 'button', id: 'submit', onclick: () => this.flush(false), title: 'Enter' }, 'Submit now')),
      h('p', { class: 'muted keys' }, 'Keys: 1–9 label · → / S skip · ← / B back · U undo · Enter submit now. ',
        'Labels wait a few seconds before they are signed, so you can still change them; once a batch is stored, a different label for the same item would count as an equivocation.'),
      this.status, h('div', { id: 'results' }));
    this.tickClock();
    this.updateProgress();
  }

  tickClock() {
    this.countdown.textContent = fmt.countdown(this.meta.deadline_ms - nodeNow());
  }

  updateProgress() {
    let extra = 0;
    for (const item of this.pending.keys()) if (!this.sent.has(item)) extra += 1;
    const done = this.sentCount() + extra;
    this.bar.value = done;
    this.counter.textContent = `${fmt.int(done)} / ${fmt.int(this.meta.total)} labelled` +
      (this.pending.size ? ` · ${this.pending.size} waiting to be signed` : '');
    this.counter.dataset.done = done;
    this.counter.dataset.pending = this.pending.size;
  }

  sentCount() {
    return Math.max(this.labelled, this.sent.size);
  }

  async item(i) {
    const off = Math.floor(i / PAGE) * PAGE;
    if (!this.pages.has(off)) {
      if (!this.loading.has(off)) {
        this.loading.set(off, api('task_items', { task_id: this.taskId, account: this.account, offset: off, limit: PAGE })
          .then((r) => { this.pages.set(off, r.items); this.noteMine(r.items); })
          .finally(() => this.loading.delete(off)));
      }
      await this.loading.get(off);
    }
    // prefetch the next page when close to its end
    const next = off + PAGE;
    if (i - off > PAGE - 10 && next < this.meta.total && !this.pages.has(next) && !this.loading.has(next)) this.item(next);
    return this.pages.get(off)[i - off];
  }

  async go(i) {
    this.i = Math.max(0, Math.min(i, this.meta.total));
    this.note.textContent = '';
    await this.show();
  }

  async show() {
    const i = this.i;
    if (i >= this.meta.total) {
      this.card.replaceChildren(h('div', { class: 'done' }, h('h2', {}, 'All items seen.'),
        h('p', {}, 'Your labels are sent a few seconds after the last one. ', h('a', { href: '#/label' }, 'Back to the tasks.'))));
      this.card.dataset.item = '';
      this.markButtons(null);
      this.flush(false);
      return;
    }
    const it = await this.item(i);
    if (i !== this.i) return;
    this.card.dataset.item = String(i);
    this.card.replaceChildren(h('div', { class: 'item-no' }, `item ${i + 1} of ${fmt.int(this.meta.total)}`,
      h('span', { class: 'muted' }, ` · labelled by ${it.annotators} so far`)), renderItem(this.taskId, it));
    this.markButtons(this.pending.get(i) ?? this.sent.get(i) ?? null);
    if (!this.painted) { this.painted = true; performance.mark('labelmesh:first-item'); } // scripts/bench ui
  }

  markButtons(current) {
    for (const b of this.buttons.children) {
      b.classList.toggle('chosen', b.dataset.label === current);
      b.classList.toggle('final', b.dataset.label === current && this.sent.has(this.i) && !this.pending.has(this.i));
    }
  }

  label(name) {
    const i = this.i;
    if (i >= this.meta.total) return;
    const stored = this.sent.get(i);
    if (stored !== undefined && stored !== name && !this.pending.has(i)) {
      this.note.textContent = `Item ${i + 1} is already signed and stored as “${stored}”. A different label now would be an equivocation, which voids your vote on it.`;
      return;
    }
    this.history.push({ item: i, before: this.pending.has(i) ? this.pending.get(i) : undefined });
    if (stored === name) this.pending.delete(i); else this.pending.set(i, name);
    this.updateProgress();
    this.scheduleFlush();
    this.go(i + 1);
  }

  async undo() {
    const last = this.history.pop();
    if (!last) { this.note.textContent = 'Nothing to undo.'; return; }
    if (!this.pending.has(last.item) && this.sent.has(last.item)) {
      this.note.textContent = `Item ${last.item + 1}'s label is already signed and stored: it cannot be taken back.`;
      return;
    }
    if (last.before === undefined) this.pending.delete(last.item); else this.pending.set(last.item, last.before);
    this.updateProgress();
    await this.go(last.item);
    this.note.textContent = `Undone: item ${last.item + 1}.`;
  }

  scheduleFlush() {
    if (this.pending.size >= FLUSH_LABELS) { this.flush(false); return; }
    if (this.flushTimer) return;
    const slow = this.meta.batches_used * 2 >= this.meta.batches_cap;
    this.flushTimer = setTimeout(() => { this.flushTimer = null; this.flush(false); }, slow ? SLOW_FLUSH_MS : FLUSH_MS);
  }

  async flush(leaving) {
    if (this.flushTimer) { clearTimeout(this.flushTimer); this.flushTimer = null; }
    if (this.flushing) await this.flushing;
    if (!this.pending.size) return;
    const labels = [...this.pending.entries()].sort((a, b) => a[0] - b[0]);
    this.pending.clear();
    const send = async () => {
      const started = performance.now();
      try {
        const r = await api('annotations_submit', { account: this.account, task_id: this.taskId, labels }, { keepalive: leaving });
        for (const [item, name] of labels) this.sent.set(item, name);
        this.labelled = Math.max(this.labelled, this.sent.size);
        this.meta.batches_used += 1;
        this.log('ok', `batch ${fmt.short(r.batch_id, 10)} ${r.status}: ${r.labels} labels signed by ${this.account} and stored`, r, started);
      } catch (e) {
        if (e instanceof ApiError && (e.status === 0 || e.status >= 500)) {
          for (const [item, name] of labels) if (!this.pending.has(item)) this.pending.set(item, name);
          this.log('err', `not sent (${e.message}); retrying in a few seconds`);
          if (!leaving) this.scheduleFlush();
        } else {
          this.log('err', `batch refused: ${e.message}`);
        }
      }
      this.updateProgress();
      if (this.i < this.meta.total) this.markButtons(this.pending.get(this.i) ?? this.sent.get(this.i) ?? null);
    };
    this.flushing = send().finally(() => { this.flushing = null; });
    return this.flushing;
  }

  log(kind, text, r, started) {
    const line = h('div', { class: `batch ${kind}`, dataset: r ? { batch: r.batch_id, status: r.status } : {} }, text);
    if (started !== undefined) line.dataset.ms = String(Math.round(performance.now() - started));
    this.status.prepend(line);
    while (this.status.children.length > 5) this.status.lastChild.remove();
    window.dispatchEvent(new CustomEvent('labelmesh:batch', { detail: { kind, text, batch: r && r.batch_id } }));
  }

  onKey(e) {
    if (e.target && ['INPUT', 'SELECT', 'TEXTAREA'].includes(e.target.tagName)) return;
    if (e.altKey || e.metaKey) return;
    if (e.ctrlKey && e.key.toLowerCase() === 'z') { e.preventDefault(); this.undo(); return; }
    if (e.ctrlKey) return;
    const k = e.key;
    if (/^[1-9]$/.test(k)) {
      const name = this.meta.labels[Number(k) - 1];
      if (name !== undefined) { e.preventDefault(); window.__lmKeyAt = performance.timeOrigin + e.timeStamp; this.label(name); }
    } else if (k === 'ArrowRight' || k === 's' || k === 'S') { e.preventDefault(); this.go(this.i + 1); }
    else if (k === 'ArrowLeft' || k === 'b' || k === 'B') { e.preventDefault(); this.go(this.i - 1); }
    else if (k === 'u' || k === 'U') { e.preventDefault(); this.undo(); }
    else if (k === 'Enter') { e.preventDefault(); this.flush(false); }
  }

  // After the deadline: the consensus next to your labels, your accuracy and reward.
  async showResults() {
    this.resultsShown = true;
    this.buttons.remove();
    for (const id of ['back', 'skip', 'undo', 'submit']) this.root.querySelector(`#${id}`).remove();
    const box = this.root.querySelector('#results');
    const me = (await api('account_list')).accounts.find((a) => a.name === this.account);
    const render = async () => {
      const c = await api('consensus_get', { task_id: this.taskId, limit: PAGE, offset: 0 });
      const mine = c.annotators.find((a) => a.account === me.public_key);
      const labels = await api('task_items', { task_id: this.taskId, account: this.account, limit: PAGE });
      const rows = c.items.map((it, k) => {
        const yours = labels.items[k] ? labels.items[k].mine : null;
        return h('tr', { class: yours && yours !== it.label ? 'differs' : '' },
          h('td', {}, it.item + 1), h('td', { class: 'clip' }, itemText(labels.items[k])),
          h('td', {}, yours ?? '–'), h('td', {}, it.label ?? '–'), h('td', {}, fmt.f(it.confidence_f, 2)));
      });
      box.replaceChildren(
        h('div', { class: 'summary', id: 'my-summary', dataset: { status: c.status } },
          h('div', {}, h('span', { class: `pill ${c.status}` }, c.status), c.status === 'certified' ? ' result of the network' : ' (not certified yet: may still change)'),
          mine ? h('div', { class: 'kpis' },
            kpi('your accuracy', fmt.pct(mine.accuracy_f), 'my-accuracy'),
            kpi('your reward', fmt.credits(mine.reward), 'my-reward'),
            kpi('your labels', fmt.int(mine.labels))) : h('p', { class: 'muted' }, 'You did not label this task.')),
        table(['#', 'item', 'yours', 'consensus', 'confidence'], rows, { id: 'compare' }),
        c.items.length < this.meta.total ? h('p', { class: 'muted' }, `First ${c.items.length} items; the requester's page has them all.`) : null);
    };
    try { await render(); } catch (e) { box.replaceChildren(errorBox(e)); }
    let seen = null;
    this.off = onTick((t) => {
      const key = (t.certified || []).includes(this.taskId);
      if (seen !== null && key !== seen) render();
      seen = key;
    });
    const stop = this.stop.bind(this);
    this.stop = async () => { this.off(); await stop(); };
  }
}

function kpi(name, value, id) {
  return h('div', { class: 'kpi' }, h('div', { class: 'kpi-v', id }, value), h('div', { class: 'kpi-n' }, name));
}

function itemText(it) {
  if (!it) return '';
  return it.data.kind === 'text' ? it.data.text : `${it.data.media_type} (${fmt.int(it.data.size)} bytes)`;
}

export function renderItem(taskId, it) {
  const d = it.data;
  if (d.kind === 'text') {
    return h('div', { class: 'item-text' }, d.text, d.truncated ? h('span', { class: 'muted' }, ' … (cut)') : null);
  }
  const src = `/blob/${taskId}/${it.item}`;
  const mt = d.media_type || '';
  if (mt.startsWith('image/')) return h('img', { class: 'item-media', src, alt: `item ${it.item + 1}` });
  if (mt.startsWith('audio/')) return h('audio', { class: 'item-media', src, controls: true, preload: 'metadata' });
  if (mt.startsWith('video/')) return h('video', { class: 'item-media', src, controls: true, preload: 'metadata' });
  return h('div', { class: 'item-text' }, `${mt || 'file'} of ${fmt.int(d.size)} bytes: `, h('a', { href: src, download: '' }, 'download'));
}
