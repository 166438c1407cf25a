// The single-page app: a hash router over the three parts (labeling, requester, network).
import { errorBox, h } from './lib.js';

const routes = [
  [/^#\/label\/([0-9a-f]{64})$/, () => import('./label.js').then((m) => m.labelTask)],
  [/^#\/label\/?$/, () => import('./label.js').then((m) => m.labelHome)],
  [/^#\/requester\/?$/, () => import('./requester.js').then((m) => m.requesterHome)],
  [/^#\/task\/([0-9a-f]{64})$/, () => import('./requester.js').then((m) => m.taskView)],
  [/^#?\/?$/, () => import('./dashboard.js').then((m) => m.dashboard)],
];

let cleanup = null;
let generation = 0;

async function render() {
  const gen = ++generation;
  if (cleanup) {
    const c = cleanup;
    cleanup = null;
    try { await c(); } catch (e) { console.error(e); }
  }
  const view = document.getElementById('view');
  const hash = location.hash || '#/';
  const part = hash.startsWith('#/label') ? 'label' : (hash.startsWith('#/requester') || hash.startsWith('#/task')) ? 'requester' : 'network';
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === part);
  for (const [re, load] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    try {
      const fn = await load();
      if (gen !== generation) return;
      const root = h('div', { class: 'page', 'data-page': part });
      view.replaceChildren(root);
      const c = await fn(root, ...m.slice(1));
      if (gen !== generation) { if (c) await c(); return; }
      cleanup = c || null;
    } catch (e) {
      view.replaceChildren(errorBox(e));
    }
    return;
  }
  view.replaceChildren(h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the network.')));
}

window.addEventListener('hashchange', render);
render();
