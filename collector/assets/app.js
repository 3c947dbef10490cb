// Tributary dashboard: plain JavaScript, no framework, no requests anywhere
// but this collector's own JSON API (/api/v1/meta, /series, /query).
//
// Flow: read the selection from the URL → load the widths (meta) and the
// series list → query → draw one SVG chart per series or group → poll again
// every few seconds while "Live" is on. The selection is mirrored into the
// URL, so a view can be bookmarked or shared.
'use strict';

const RANGES = { '15m': 15 * 60e3, '1h': 3600e3, '6h': 6 * 3600e3, '24h': 24 * 3600e3 };
// Step (and axis tick) durations that read well, in ms.
const NICE = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
  3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3];
const POLL_MS = 5000;        // live refresh period
const TARGET_POINTS = 120;   // what "auto" step aims for per chart
const MAX_WIDTH_POINTS = 5000; // "auto" width: finest width with at most this many windows
const MAX_CHARTS = 24;       // more results are summarised, not drawn
const TOKEN_KEY = 'tributary.token';

const $ = (id) => document.getElementById(id);

// The selection: the single source of truth for the controls and the URL.
const sel = {
  metric: '', device: '', tags: '', group_by: '', range: '1h',
  from: null, to: null, width: 'auto', step: 'auto', q: 'p50', live: true,
};
const app = { meta: null, series: [], token: '', busy: false, again: false, results: null, plan: null };

// ---------- small helpers ----------

function fmtDuration(ms) {
  if (ms % 86400e3 === 0) return `${ms / 86400e3} d`;
  if (ms % 3600e3 === 0) return `${ms / 3600e3} h`;
  if (ms % 60e3 === 0) return `${ms / 60e3} min`;
  if (ms % 1e3 === 0) return `${ms / 1e3} s`;
  return `${ms} ms`;
}

// A value with about 4 significant digits, without trailing zeros.
function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(digits - 1);
  return String(parseFloat(v.toPrecision(digits)));
}

const pad2 = (n) => String(n).padStart(2, '0');
function fmtTime(t, withSeconds) {
  const d = new Date(t);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return withSeconds ? `${hm}:${pad2(d.getSeconds())}` : hm;
}
function fmtDate(t) {
  return new Date(t).toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
}
function fmtDateTime(t) { return `${fmtDate(t)} ${fmtTime(t, true)}`; }

// datetime-local inputs hold local time without a zone.
function toLocalInput(t) {
  const d = new Date(t);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${fmtTime(t, true)}`;
}

// "site=north, room=2" → { site: 'north', room: '2' } (malformed parts ignored).
function parseTags(text) {
  const out = {};
  for (const part of text.split(',')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

// Creates an SVG element with attributes and appends it to `parent`.
function svgEl(tag, attrs, parent) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// ---------- URL <-> selection ----------

function readUrl() {
  const p = new URLSearchParams(location.search);
  app.fresh = [...p.keys()].length === 0;
  for (const k of ['metric', 'device', 'tags', 'group_by', 'width', 'step', 'q']) {
    if (p.has(k)) sel[k] = p.get(k);
  }
  // tag.K=V parameters, as in the API, add to the tag filter.
  const tagParts = [];
  for (const [k, v] of p) if (k.startsWith('tag.')) tagParts.push(`${k.slice(4)}=${v}`);
  if (tagParts.length) sel.tags = tagParts.join(', ');
  if (p.has('from') && p.has('to')) {
    sel.range = 'custom';
    sel.from = Number(p.get('from'));
    sel.to = Number(p.get('to'));
  } else if (p.has('range') && RANGES[p.get('range')]) {
    sel.range = p.get('range');
  }
  if (p.get('live') === '0') sel.live = false;
}

function writeUrl() {
  const p = new URLSearchParams();
  for (const k of ['metric', 'device', 'group_by']) if (sel[k]) p.set(k, sel[k]);
  for (const [k, v] of Object.entries(parseTags(sel.tags))) p.set(`tag.${k}`, v);
  if (sel.range === 'custom') { p.set('from', sel.from); p.set('to', sel.to); } else p.set('range', sel.range);
  if (sel.width !== 'auto') p.set('width', sel.width);
  if (sel.step !== 'auto') p.set('step', sel.step);
  p.set('q', sel.q);
  if (!sel.live) p.set('live', '0');
  history.replaceState(null, '', `${location.pathname}?${p}`);
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const headers = {};
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  let resp;
  try {
    resp = await fetch(path, { headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `cannot reach the collector (${e.message})`);
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON: reported below */ }
  if (!resp.ok) {
    const why = body && body.error ? body.error : `HTTP ${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, why);
  }
  if (body === null) throw new ApiError(resp.status, 'the collector answered with something that is not JSON');
  return body;
}

// ---------- controls ----------

function setOptions(select, options, value) {
  // options: [[value, label], ...]; the current value is kept even if absent
  // (a duration in ms, as a width or step from the URL, is shown as one).
  if (value && !options.some(([v]) => v === value)) {
    options.push([value, ['width', 'step'].includes(select.id) && /^\d+$/.test(value) ? fmtDuration(Number(value)) : value]);
  }
  const html = options.map(([v, l]) => `<option value="${escapeHtml(v)}">${escapeHtml(l)}</option>`).join('');
  if (select.dataset.html !== html) { select.innerHTML = html; select.dataset.html = html; }
  setValue(select, value);
}

// Sets a control's value unless the user is using it (a poll must not
// overwrite what is being typed or picked).
function setValue(el, value) {
  if (el !== document.activeElement) el.value = value;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// On a bare first visit with many series, one chart per series would be a
// wall of charts: group by the tag that splits them into fewest groups.
function defaultGrouping() {
  const metrics = [...new Set(app.series.map((s) => s.metric))].sort();
  const metric = sel.metric || metrics[0];
  const ofMetric = app.series.filter((s) => s.metric === metric);
  if (ofMetric.length <= 8) return;
  const values = {};
  for (const s of ofMetric) {
    for (const [k, v] of Object.entries(s.tags || {})) (values[k] = values[k] || new Set()).add(v);
  }
  const best = Object.entries(values).filter(([, v]) => v.size > 1 && v.size <= MAX_CHARTS)
    .sort((a, b) => a[1].size - b[1].size)[0];
  if (best) { sel.group_by = best[0]; writeUrl(); }
}

// Fills the selects from the series list and the selection.
function renderControls() {
  const metrics = [...new Set(app.series.map((s) => s.metric))].sort();
  if (!sel.metric && metrics.length) sel.metric = metrics[0];
  setOptions($('metric'), metrics.map((m) => [m, m]), sel.metric);

  const filter = parseTags(sel.tags);
  const ofMetric = app.series.filter((s) => s.metric === sel.metric);
  const matching = ofMetric.filter((s) => Object.entries(filter).every(([k, v]) => (s.tags || {})[k] === v));
  const devices = [...new Set(matching.map((s) => s.device))].sort();
  setOptions($('device'), [['', `all devices (${devices.length})`], ...devices.map((d) => [d, d])], sel.device);

  const keys = [...new Set(ofMetric.flatMap((s) => Object.keys(s.tags || {})))].sort();
  setOptions($('group_by'), [['', 'none'], ['device', 'device'], ...keys.map((k) => [k, k])], sel.group_by);

  const widths = (app.meta ? app.meta.widths_ms : []).map((w) => [String(w), fmtDuration(w)]);
  setOptions($('width'), [['auto', 'auto'], ...widths], sel.width);

  const plan = app.plan || makePlan(Date.now());
  const steps = NICE.filter((s) => s >= plan.width && s % plan.width === 0).map((s) => [String(s), fmtDuration(s)]);
  setOptions($('step'), [['auto', 'auto'], ...steps], sel.step);

  setValue($('tags'), sel.tags);
  setValue($('range'), sel.range);
  setValue($('q'), sel.q);
  $('live').checked = sel.live;
  $('custom-range').hidden = sel.range !== 'custom';
  if (sel.range === 'custom') {
    setValue($('from'), toLocalInput(sel.from));
    setValue($('to'), toLocalInput(sel.to));
  }
}

function onControlChange(ev) {
  const id = ev.target.id;
  if (id === 'live') sel.live = ev.target.checked;
  else if (id === 'from' || id === 'to') {
    const t = new Date(ev.target.value).getTime();
    if (Number.isFinite(t)) sel[id] = t;
  } else if (id === 'range' && ev.target.value === 'custom' && sel.range !== 'custom') {
    // Start the custom range from what is shown now.
    const plan = makePlan(Date.now());
    sel.range = 'custom'; sel.from = plan.from; sel.to = plan.to;
  } else if (id in sel) sel[id] = ev.target.value;
  if (id === 'metric') { sel.device = ''; sel.group_by = ''; }
  if (id === 'width') sel.step = 'auto';
  if (id === 'group_by' && sel.group_by) sel.device = '';
  writeUrl();
  refresh();
}

// ---------- the query plan ----------

// Decides range, width and step: windows are aligned to multiples of their
// width, so `from` and `to` are rounded to the step to keep buckets aligned.
function makePlan(now) {
  let from, to;
  if (sel.range === 'custom' && Number.isFinite(sel.from) && Number.isFinite(sel.to)) {
    from = sel.from; to = sel.to;
  } else {
    to = now; from = now - (RANGES[sel.range] || RANGES['1h']);
  }
  const span = Math.max(1, to - from);
  const widths = (app.meta ? app.meta.widths_ms : []).slice().sort((a, b) => a - b);
  let width = Number(sel.width);
  if (!(width > 0)) {
    width = widths.find((w) => span / w <= MAX_WIDTH_POINTS) || widths[widths.length - 1] || 60e3;
  }
  let step = Number(sel.step);
  if (!(step > 0)) {
    const fits = [width, ...NICE.filter((s) => s > width && s % width === 0)];
    step = fits.find((s) => span / s <= TARGET_POINTS) || Math.ceil(span / TARGET_POINTS / width) * width;
  }
  from = Math.floor(from / step) * step;
  to = Math.max(from + step, Math.ceil(to / step) * step);
  return { from, to, width, step };
}

function queryPath(plan) {
  const p = new URLSearchParams({ metric: sel.metric });
  if (sel.device) p.set('device', sel.device);
  for (const [k, v] of Object.entries(parseTags(sel.tags))) p.set(`tag.${k}`, v);
  for (const k of ['from', 'to', 'width', 'step']) p.set(k, plan[k]);
  p.set('stats', ['count', 'mean', 'min', 'max', sel.q].filter(Boolean).join(','));
  if (sel.group_by) p.set('group_by', sel.group_by);
  return `/api/v1/query?${p}`;
}

// ---------- refresh ----------

function setState(state) { document.body.dataset.state = state; }

function showError(err) {
  const box = $('error');
  if (!err) { box.hidden = true; box.textContent = ''; return; }
  box.hidden = false;
  box.textContent = err.status
    ? `The collector refused the request (HTTP ${err.status}): ${err.message}`
    : `Error: ${err.message}`;
}

function setStatus(text, cls) {
  $('status').innerHTML = `<span class="${cls}">●</span> ${escapeHtml(text)}`;
}

async function refresh() {
  // One request chain at a time; a change made meanwhile runs right after.
  if (app.busy) { app.again = true; return; }
  app.busy = true;
  app.again = false;
  try {
    if (!app.meta) app.meta = await api('/api/v1/meta');
    if (app.meta.token_required && !app.token) {
      throw new ApiError(401, 'this collector needs a bearer token; enter it above');
    }
    app.series = (await api('/api/v1/series')).series;
    if (app.fresh && app.series.length) { app.fresh = false; defaultGrouping(); }
    app.plan = makePlan(Date.now());
    renderControls();
    app.plan = makePlan(Date.now()); // the width select may have been filled just now
    if (!sel.metric) {
      app.results = null;
      showError(null);
      showEmpty('No series are stored yet. Start an agent (or <code>tributary-collector demo</code>); this page refreshes by itself.');
      setState('empty');
    } else {
      const body = await api(queryPath(app.plan));
      app.results = body.results;
      showError(null);
      $('token-panel').hidden = !!app.token || !app.meta.token_required;
      draw();
    }
    const when = fmtTime(Date.now(), true);
    setStatus(sel.live ? `live · updated ${when}` : `paused · updated ${when}`, sel.live ? 'live' : 'paused');
  } catch (err) {
    if (err.status === 401) {
      $('token-panel').hidden = false;
      setState('auth');
    } else {
      setState('error');
    }
    showError(err);
    $('charts').classList.add('stale');
    setStatus(err.status === 401 ? 'token needed' : 'error', 'paused');
  } finally {
    app.busy = false;
    if (app.again) refresh();
  }
}

function showEmpty(html) {
  $('empty').hidden = !html;
  $('empty').innerHTML = html || '';
}

// ---------- drawing ----------

function resultLabel(r) {
  if (r.group) {
    const [k, v] = Object.entries(r.group)[0] || ['', ''];
    return { title: `${k} = ${v === '' ? '(no tag)' : v}`, tags: `${sel.metric}, merged` };
  }
  const s = r.series;
  const tags = Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join(' ');
  return { title: s.device, tags };
}

// The y-axis title: the metric and its `unit` tag — for a group, the unit
// its series share (none shown when they differ).
function unitOf(r) {
  let units;
  if (r.series) units = [(r.series.tags || {}).unit];
  else {
    const [k, v] = Object.entries(r.group)[0] || ['', ''];
    units = app.series.filter((s) => s.metric === sel.metric && ((k === 'device' ? s.device : (s.tags || {})[k]) || '') === v)
      .map((s) => (s.tags || {}).unit);
  }
  const unit = new Set(units).size === 1 ? units[0] : undefined;
  return unit ? `${sel.metric} (${unit})` : sel.metric;
}

function draw() {
  const plan = app.plan;
  const charts = $('charts');
  charts.classList.remove('stale');
  charts.innerHTML = '';
  // Natural order of labels: d2 before d10.
  const results = (app.results || []).filter((r) => r.points.length > 0)
    .sort((a, b) => resultLabel(a).title.localeCompare(resultLabel(b).title, undefined, { numeric: true }));
  $('legend').hidden = results.length === 0;
  $('legend-q').textContent = sel.q || '';
  $('legend-q').parentElement.hidden = !sel.q;
  $('plan').textContent = `${fmtDateTime(plan.from)} → ${fmtDateTime(plan.to)} · width ${fmtDuration(plan.width)} · step ${fmtDuration(plan.step)}`;
  if (results.length === 0) {
    showEmpty(`No data for <b>${escapeHtml(sel.metric)}</b> in this range `
      + `(${escapeHtml(fmtDateTime(plan.from))} → ${escapeHtml(fmtDateTime(plan.to))}) at width ${fmtDuration(plan.width)}.`
      + ' Try a longer range, another width, or fewer filters.');
    setState('empty');
    $('more').hidden = true;
    return;
  }
  showEmpty(null);
  for (const r of results.slice(0, MAX_CHARTS)) charts.appendChild(chart(r, plan));
  $('more').hidden = results.length <= MAX_CHARTS;
  $('more').textContent = `Showing ${MAX_CHARTS} of ${results.length} charts: narrow the selection or group by a tag.`;
  setState('ok');
}

// "Nice" axis ticks (1, 2, 5 × 10^k) covering [lo, hi].
function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

// One chart card: title, plot (band, mean, quantile, points, axes), readout.
function chart(r, plan) {
  const q = sel.q;
  const pts = r.points;
  const card = document.createElement('section');
  card.className = 'card';
  const label = resultLabel(r);
  card.dataset.label = label.title;
  const nFinal = pts.filter((p) => p.final).length;
  card.innerHTML = `<h2>${escapeHtml(label.title)}<span class="tags">${escapeHtml(label.tags)}</span></h2>`
    + `<div class="meta">${pts.length} points · ${nFinal} final · ${pts.length - nFinal} provisional`
    + ` · ${pts.reduce((a, p) => a + (p.count || 0), 0).toLocaleString('en-US')} readings</div>`;

  const W = Math.max(320, Math.round($('charts').clientWidth > 0 ? cardWidth() : 640));
  const H = 240;
  const m = { l: 58, r: 22, t: 10, b: 26 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${label.title} chart` }, card);

  // y domain from every value drawn.
  const vals = pts.flatMap((p) => [p.min, p.max, p.mean, q ? p[q] : null]).filter(Number.isFinite);
  let lo = vals.length ? Math.min(...vals) : 0, hi = vals.length ? Math.max(...vals) : 1;
  if (lo === hi) { lo -= Math.abs(lo) * 0.05 || 1; hi += Math.abs(hi) * 0.05 || 1; }
  const padY = (hi - lo) * 0.08; lo -= padY; hi += padY;
  const x = (t) => m.l + ((t - plan.from) / (plan.to - plan.from)) * pw;
  const y = (v) => m.t + (1 - (v - lo) / (hi - lo)) * ph;
  const mid = (p) => x(p.t + plan.step / 2); // a point stands for its whole step

  // Grid and y axis.
  for (const v of niceTicks(lo, hi, 5)) {
    svgEl('line', { class: 'grid', x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v) }, svg);
    svgEl('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, svg).textContent = fmtNum(v);
  }
  const yl = svgEl('text', { class: 'ylabel', transform: `translate(14 ${m.t + ph / 2}) rotate(-90)`, 'text-anchor': 'middle' }, svg);
  yl.textContent = unitOf(r);

  // x axis: time ticks at a nice interval, about one per 110 px.
  const span = plan.to - plan.from;
  const tick = NICE.find((s) => span / s <= pw / 110) || NICE[NICE.length - 1];
  const withDate = span > 86400e3;
  svgEl('line', { class: 'axis', x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }, svg);
  const tz = new Date().getTimezoneOffset() * 60e3; // ticks on local-time boundaries
  for (let t = Math.ceil((plan.from - tz) / tick) * tick + tz; t <= plan.to; t += tick) {
    svgEl('line', { class: 'axis', x1: x(t), x2: x(t), y1: m.t + ph, y2: m.t + ph + 4 }, svg);
    const txt = withDate && tick >= 86400e3 ? fmtDate(t) : fmtTime(t, tick < 60e3);
    // Labels at the plot's edges are anchored inward so they are not cut.
    const anchor = x(t) > m.l + pw - 20 ? 'end' : x(t) < m.l + 20 ? 'start' : 'middle';
    svgEl('text', { x: x(t), y: H - 8, 'text-anchor': anchor }, svg).textContent = txt;
  }

  // Contiguous runs of points (a missing step breaks band and lines).
  const runs = [];
  for (const p of pts) {
    const last = runs[runs.length - 1];
    if (last && p.t - last[last.length - 1].t === plan.step) last.push(p); else runs.push([p]);
  }
  const line = (run, f) => run.filter((p) => Number.isFinite(f(p)))
    .map((p, i) => `${i ? 'L' : 'M'}${mid(p).toFixed(1)},${y(f(p)).toFixed(1)}`).join('');
  for (const run of runs) {
    const upper = run.map((p) => `${mid(p).toFixed(1)},${y(p.max).toFixed(1)}`);
    const lower = run.slice().reverse().map((p) => `${mid(p).toFixed(1)},${y(p.min).toFixed(1)}`);
    if (run.length > 1) svgEl('polygon', { class: 'band', points: [...upper, ...lower].join(' ') }, svg);
    else svgEl('line', { class: 'mean', x1: mid(run[0]), x2: mid(run[0]), y1: y(run[0].max), y2: y(run[0].min), 'stroke-opacity': 0.3, 'stroke-width': 6 }, svg);
    svgEl('path', { class: 'mean', d: line(run, (p) => p.mean) }, svg);
    // Dashed, over the mean, so it shows even where the two coincide.
    if (q) svgEl('path', { class: 'quant', d: line(run, (p) => p[q]) }, svg);
  }

  // The points themselves, carrying their values for tooltips and tests.
  const radius = pts.length > 90 ? 2.2 : 3.2;
  for (const p of pts) {
    if (!Number.isFinite(p.mean)) continue;
    const c = svgEl('circle', {
      class: `pt ${p.final ? 'final' : 'provisional'}`, cx: mid(p).toFixed(1), cy: y(p.mean).toFixed(1), r: radius,
      'data-t': p.t, 'data-mean': p.mean, 'data-min': p.min, 'data-max': p.max, 'data-count': p.count,
      'data-final': p.final, 'data-revision': p.revision,
    }, svg);
    if (q) c.setAttribute('data-q', p[q]);
    svgEl('title', {}, c).textContent = describe(p);
  }

  // Hover readout: the point nearest to the pointer.
  const readout = document.createElement('div');
  readout.className = 'readout';
  readout.textContent = 'hover the chart for values';
  card.appendChild(readout);
  const cursor = svgEl('line', { class: 'cursor', y1: m.t, y2: m.t + ph, x1: -10, x2: -10 }, svg);
  svg.addEventListener('mousemove', (ev) => {
    const box = svg.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * W;
    let best = null;
    for (const p of pts) if (!best || Math.abs(mid(p) - px) < Math.abs(mid(best) - px)) best = p;
    if (!best) return;
    cursor.setAttribute('x1', mid(best)); cursor.setAttribute('x2', mid(best));
    readout.textContent = describe(best);
  });
  return card;
}

function describe(p) {
  const q = sel.q ? ` · ${sel.q} ${fmtNum(p[sel.q], 6)}` : '';
  return `${fmtDateTime(p.t)} · mean ${fmtNum(p.mean, 6)} · min ${fmtNum(p.min, 6)} · max ${fmtNum(p.max, 6)}${q}`
    + ` · n ${p.count} · ${p.final ? 'final' : 'provisional'}${p.revision ? ` (revision ${p.revision})` : ''}`;
}

// The width one card gets in the grid (same rule as the CSS).
function cardWidth() {
  const grid = $('charts');
  const inner = grid.clientWidth - 40;
  const n = app.results ? Math.min(app.results.filter((r) => r.points.length).length, MAX_CHARTS) : 1;
  const cols = Math.max(1, Math.min(n, Math.floor((inner + 14) / (520 + 14))));
  return (inner - (cols - 1) * 14) / cols - 26;
}

// ---------- start ----------

function start() {
  // A link may hand over the token in its fragment (never sent to a server):
  // /#token=… — kept like a typed one and removed from the address bar.
  const handed = new URLSearchParams(location.hash.slice(1)).get('token');
  if (handed) {
    localStorage.setItem(TOKEN_KEY, handed);
    history.replaceState(null, '', location.pathname + location.search);
  }
  app.token = localStorage.getItem(TOKEN_KEY) || '';
  readUrl();
  $('controls').addEventListener('change', onControlChange);
  $('controls').addEventListener('submit', (ev) => ev.preventDefault());
  $('token-button').addEventListener('click', () => { $('token-panel').hidden = !$('token-panel').hidden; });
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    app.token = $('token-input').value.trim();
    localStorage.setItem(TOKEN_KEY, app.token);
    $('token-input').value = '';
    refresh();
  });
  $('token-clear').addEventListener('click', () => {
    app.token = '';
    localStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (app.results) draw(); }, 150);
  });
  // Live polling: each tick re-plans a relative range up to "now".
  setInterval(() => { if (sel.live && !document.hidden) refresh(); }, POLL_MS);
  refresh();
}

start();
