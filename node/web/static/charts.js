// Two small SVG charts (no library): a histogram of values in [0, 1] and a line over time.
const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

function text(x, y, s, attrs = {}) {
  const t = svg('text', { x, y, ...attrs });
  t.textContent = s;
  return t;
}

// Histogram of values in [0, 1] in `bins` bars.
export function histogram(values, { bins = 10, title = '', id } = {}) {
  const W = 320, H = 160, L = 34, B = 22, T = 18;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor(v * bins)))] += 1;
  const max = Math.max(1, ...counts);
  const bw = (W - L - 4) / bins;
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title, ...(id ? { id } : {}) });
  g.append(text(L, 12, `${title} (${values.length} items)`, { class: 'chart-title' }));
  for (let k = 0; k < bins; k++) {
    const bh = ((H - B - T) * counts[k]) / max;
    const bar = svg('rect', { x: L + k * bw + 1, y: H - B - bh, width: Math.max(1, bw - 2), height: bh, class: 'bar' });
    const tip = svg('title');
    tip.textContent = `${(k / bins).toFixed(1)}–${((k + 1) / bins).toFixed(1)}: ${counts[k]}`;
    bar.append(tip);
    g.append(bar);
  }
  g.append(svg('line', { x1: L, y1: H - B, x2: W - 4, y2: H - B, class: 'axis' }));
  for (const x of [0, 0.5, 1]) g.append(text(L + x * (W - L - 4), H - 6, x.toFixed(1), { class: 'tick', 'text-anchor': 'middle' }));
  g.append(text(L - 4, T + 8, String(max), { class: 'tick', 'text-anchor': 'end' }));
  g.append(text(L - 4, H - B, '0', { class: 'tick', 'text-anchor': 'end' }));
  return g;
}

// A line of (t seconds, value) points; the x axis spans the points given.
export function lineChart(points, { title = '', unit = '', id } = {}) {
  const W = 1000, H = 170, L = 40, B = 20, T = 20;
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart wide', role: 'img', 'aria-label': title, ...(id ? { id } : {}) });
  const last = points.length ? points[points.length - 1][1] : 0;
  g.append(text(L, 12, `${title}: ${last.toFixed(1)} ${unit}`, { class: 'chart-title' }));
  g.append(svg('line', { x1: L, y1: H - B, x2: W - 4, y2: H - B, class: 'axis' }));
  if (points.length < 2) return g;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => L + ((W - L - 4) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => H - B - ((H - B - T) * v) / max;
  g.append(svg('polyline', { points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' '), class: 'line' }));
  g.append(text(L - 4, T + 8, max.toFixed(max < 10 ? 1 : 0), { class: 'tick', 'text-anchor': 'end' }));
  g.append(text(L - 4, H - B, '0', { class: 'tick', 'text-anchor': 'end' }));
  g.append(text(L, H - 4, `${Math.round(t1 - t0)} s`, { class: 'tick' }));
  return g;
}
