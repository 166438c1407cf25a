// Network dashboard: this node, its peers and their sync state, tasks by state, messages per
// second, finality, leaderboards, confidence/agreement plots; live from the event stream.
import { api, errorBox, fmt, h, nodeNow, onTick, serial, table } from './lib.js';
import { histogram, lineChart } from './charts.js';

const RATE_POINTS = 120;
const FINALITY_TASKS = 8;

export async function dashboard(root) {
  const cards = h('div', { class: 'kpis', id: 'net-kpis' });
  const rate = h('div', { id: 'rate' });
  const peers = h('div', { id: 'peers' });
  const finality = h('div', { id: 'finality' });
  const boards = h('div', { class: 'boards', id: 'leaderboards' });
  const plots = h('div', { class: 'plots', id: 'net-plots' });
  const ledger = h('div', { id: 'balances' });
  root.append(h('h1', {}, 'Network'), cards, rate,
    h('div', { class: 'cols' }, h('section', {}, h('h2', {}, 'Peers and sync'), peers), h('section', {}, h('h2', {}, 'Finality'), finality)),
    h('h2', {}, 'Leaderboards'), boards, ledger, h('h2', {}, 'Latest certified task'), plots);

  const samples = []; // [seconds, accepted]
  let info = null;

  const slow = serial(async () => {  // peers, finality, leaderboards, plots: on change, at most every 2 s
    try {
      const [sync, plist, tl, rw, rep] = await Promise.all([api('sync_status'), api('peers_list'), api('tasks_list', { limit: 50 }),
        api('rewards_get'), api('reputation_get')]);
      renderPeers(sync, plist);
      await renderFinality(tl.tasks);
      renderBoards(rw, rep);
      await renderPlots(tl.tasks);
      await renderLedger();
    } catch (e) {
      peers.replaceChildren(errorBox(e));
    }
  });

  function renderCards(tick) {
    const s = tick.tasks_by_state;
    cards.replaceChildren(
      kpi('node', info ? fmt.short(info.peer_id, 14) : '…', 'k-peer', info && info.peer_id),
      kpi('network', info ? info.network_name : '…', 'k-network'),
      kpi('peers', fmt.int(tick.peers), 'k-peers'),
      kpi('messages stored', fmt.int(tick.stored), 'k-stored'),
      kpi('messages / s', samples.length > 1 ? fmt.f(currentRate(), 1) : '…', 'k-rate'),
      kpi('tasks open · closed · certified', `${s.open} · ${s.closed} · ${s.certified}`, 'k-tasks'),
      kpi('refused (invalid) · ignored', `${fmt.int(tick.rejected)} · ${fmt.int(tick.ignored)}`, 'k-refused'));
  }

  function currentRate() {
    const pts = ratePoints();
    return pts.length ? pts[pts.length - 1][1] : 0;
  }

  function ratePoints() {
    const out = [];
    for (let k = 1; k < samples.length; k++) {
      const dt = samples[k][0] - samples[k - 1][0];
      if (dt > 0) out.push([samples[k][0], (samples[k][1] - samples[k - 1][1]) / dt]);
    }
    return out;
  }

  function renderPeers(sync, plist) {
    const byId = new Map(sync.peers.map((p) => [p.peer_id, p]));
    const rows = plist.peers.map((p) => {
      const s = byId.get(p.peer_id) || {};
      return h('tr', {}, h('td', {}, h('code', { title: p.peer_id }, fmt.short(p.peer_id, 16))),
        h('td', {}, fmt.age(s.last_sync_age_s)), h('td', {}, s.lag_tasks ?? '–'), h('td', {}, fmt.int(s.fetched)),
        h('td', {}, fmt.int(s.served)), h('td', {}, s.banned ? 'banned' : (s.last_error ? h('span', { title: s.last_error }, 'error') : 'ok')));
    });
    peers.replaceChildren(rows.length ? table(['peer', 'last sync', 'tasks differing', 'fetched', 'served', 'state'], rows, { id: 'peer-table' })
      : h('p', { class: 'muted' }, 'No peer connected.'));
  }

  async function renderFinality(tasks) {
    const recent = tasks.slice(0, FINALITY_TASKS);
    const certs = await Promise.all(recent.map((t) => (t.status === 'open' ? null : api('certificate_get', { task_id: t.task_id }).catch(() => null))));
    const rows = recent.map((t, k) => {
      const c = certs[k];
      const state = t.status === 'open' ? fmt.countdown(t.deadline_ms - nodeNow())
        : c && c.certified ? `certified, round ${c.certificate.round} (${c.certificate.weight}/${c.certificate.total_weight})`
          : c ? `round ${c.finality.round}, waiting for votes` : 'closed';
      return h('tr', {}, h('td', {}, h('a', { href: `#/task/${t.task_id}` }, t.title || fmt.short(t.task_id, 12))),
        h('td', {}, h('span', { class: `pill ${c && c.certified ? 'certified' : t.status}` }, c && c.certified ? 'certified' : t.status)), h('td', {}, state));
    });
    finality.replaceChildren(rows.length ? table(['task', 'state', 'finality'], rows, { id: 'finality-table' })
      : h('p', { class: 'muted' }, 'No task yet.'));
  }

  function renderBoards(rw, rep) {
    const top = rw.totals.slice(0, 10).map((r, k) => h('tr', {}, h('td', {}, k + 1),
      h('td', {}, h('code', { title: r.account }, fmt.short(r.account, 12))), h('td', {}, fmt.credits(r.reward))));
    const domains = new Map();
    for (const r of rep.reputation) {
      if (!domains.has(r.domain)) domains.set(r.domain, []);
      if (domains.get(r.domain).length < 10) domains.get(r.domain).push(r);
    }
    boards.replaceChildren(
      h('section', {}, h('h3', {}, 'Rewards (certified tasks)'),
        top.length ? table(['#', 'account', 'reward'], top, { id: 'reward-board' }) : h('p', { class: 'muted' }, 'No certified task yet.')),
      ...[...domains.entries()].slice(0, 6).map(([d, rows]) => h('section', {}, h('h3', {}, `Reputation · ${d || 'all domains'}`),
        table(['account', 'weight', 'labels'], rows.map((r) => h('tr', {},
          h('td', {}, h('code', { title: r.account }, fmt.short(r.account, 12))), h('td', {}, fmt.f(r.weight_f, 4)), h('td', {}, fmt.int(r.labels))))))));
  }

  async function renderPlots(tasks) {
    let cert = null;
    for (const t of tasks) if (t.status !== 'open') { cert = t; break; }
    if (!cert) { plots.replaceChildren(h('p', { class: 'muted' }, 'No closed task yet.')); return; }
    const c = await api('consensus_get', { task_id: cert.task_id, limit: 2000 });
    plots.replaceChildren(
      h('p', {}, h('a', { href: `#/task/${cert.task_id}` }, cert.title || fmt.short(cert.task_id, 12)), ` · ${c.status} · α ${fmt.f(c.alpha_f)}`),
      histogram(c.items.filter((x) => x.votes).map((x) => x.confidence_f), { title: 'confidence', id: 'net-confidence' }),
      histogram(c.items.filter((x) => x.votes > 1).map((x) => x.agreement_f), { title: 'agreement', id: 'net-agreement' }));
  }

  let ledgerMissing = null;
  async function renderLedger() {  // balances, once the node has a ledger (RPC balance_get)
    if (ledgerMissing === null) ledgerMissing = !('balance_get' in (await api('rpc_methods')).methods);
    if (ledgerMissing) return;
    try {
      const { accounts, supply } = await api('balance_get');  // every local account, and the supply
      const rows = accounts.map((a) => h('tr', {}, h('td', {}, a.name ?? fmt.short(a.account, 12)),
        h('td', {}, fmt.credits(a.balance)), h('td', {}, fmt.credits(a.escrowed)), h('td', {}, fmt.credits(a.pending_out))));
      const ok = supply.invariant_ok ? 'holds' : 'BROKEN';
      ledger.replaceChildren(h('h2', {}, 'Balances of this node\'s accounts'),
        table(['account', 'balance', 'in escrow', 'pending'], rows, { id: 'balances-table' }),
        h('p', { class: 'muted', id: 'supply' }, `supply ${fmt.credits(supply.supply)} = balances ${fmt.credits(supply.balances)}` +
          ` + escrow ${fmt.credits(supply.escrow)} + burned ${fmt.credits(supply.burned)} (${ok} on this node)`));
    } catch (e) {
      if (e.status === 404) { ledgerMissing = true; ledger.replaceChildren(); } else ledger.replaceChildren(errorBox(e));
    }
  }

  try { info = await api('node_info'); } catch (e) { root.append(errorBox(e)); }
  let lastSlow = 0, seen = null;
  const off = onTick((tick) => {
    samples.push([tick.time_ms / 1000, tick.accepted]);
    while (samples.length > RATE_POINTS + 1) samples.shift();
    renderCards(tick);
    rate.replaceChildren(lineChart(ratePoints(), { title: 'messages accepted per second', unit: '/s', id: 'rate-chart' }));
    const key = JSON.stringify([tick.tasks, tick.certified, tick.peers, tick.tasks_by_state]);
    const now = performance.now();
    if ((key !== seen && now - lastSlow > 2000) || now - lastSlow > 10000) { seen = key; lastSlow = now; slow(); }
  });
  return () => off();
}

function kpi(name, value, id, title) {
  return h('div', { class: 'kpi' }, h('div', { class: 'kpi-v', id, title }, value), h('div', { class: 'kpi-n' }, name));
}
