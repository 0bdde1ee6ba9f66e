/**
 * The dashboard in the browser: served by the node's admin endpoint (admin.ts) from the
 * package, nothing from elsewhere (strict CSP: this file and uPlot's are the only scripts).
 *
 * - Access: the bearer token (`admin.token`) is typed once into the sign-in form, kept in
 *   sessionStorage (gone with the tab) and sent as an Authorization header; never in a URL.
 * - Live updates: one Server-Sent Events stream (`/api/events`) read with fetch() and a
 *   stream reader, because EventSource cannot send the Authorization header. The stream
 *   carries an overview every few seconds and a `queue` event when the queue changed (the
 *   queue page then re-reads its page); no view polls. Silence longer than three intervals,
 *   or a stream that ends, shows "Disconnected" and reconnects with a capped backoff.
 * - Views (hash routes): #/overview, #/queue?state=…&q=…&page=…, #/message/<id>.
 * - Every value reaches the page as text (textContent), never as HTML.
 */
import type UPlotType from 'uplot';

const UPlot = (globalThis as unknown as { uPlot: typeof UPlotType }).uPlot;

// ---- types of the admin API (ops/dashboard.ts, spool/browse.ts, ops/queue.ts) ----------

interface Peer {
  name: string;
  link: 'up' | 'connecting' | 'down';
  lastError: string | null;
  rttMs: number | null;
  lastSeenAgeSeconds: number | null;
  lastPutAgeSeconds: number | null;
  replication: { windowMinutes: number; count: number; p50Ms: number | null; p99Ms: number | null };
  replicationFailures: number;
  promotions: number;
  promotedMessages: number;
}
interface Cert {
  certificate: string;
  subject: string;
  notAfter: number;
  secondsLeft: number;
}
interface Overview {
  node: string;
  version: string;
  now: number;
  startedAt: number;
  ready: { ready: boolean; reasons: string[] };
  peers: Peer[];
  queue: {
    queued: number;
    deferred: number;
    held: number;
    spooled: number;
    shadow: number;
    oldestPrimaryAgeSeconds: number | null;
    oldestShadowAgeSeconds: number | null;
    discardsPending: number;
  };
  spool: { bytes: number; maxBytes: number };
  recent: { windowMinutes: number; accepted: number; refused451: number; refused: number; rate451: number };
  totals: { accepted: number; degraded: number; refused451: number; promotions: number; promotedMessages: number; duplicateRisks: number };
  certificates: Cert[];
  series: { minutes: number[]; counts: Record<'accepted' | 'delivered' | 'deferred' | 'bounced' | 'refused' | 'refused451', number[]> };
  errors: Array<{ error: string; recipients: number; messages: number }>;
}
interface Recipient {
  idx: number;
  address: string;
  state: 'pending' | 'delivered' | 'failed';
  lastError: string | null;
}
interface Summary {
  id: string;
  role: 'primary' | 'shadow';
  state: string;
  origin: string;
  sender: string;
  size: number;
  receivedAt: number;
  nextAttemptAt: number;
  attempts: number;
  lastError: string | null;
  shadowPeer: string | null;
  recipients: Recipient[];
}
interface Page {
  total: number;
  offset: number;
  limit: number;
  messages: Summary[];
}
interface MessageView extends Summary {
  client: string | null;
  headers: string;
  history: Array<{ at: number | null; event: string }>;
}

// ---- small helpers ---------------------------------------------------------------------

const TOKEN_KEY = 'shadowrelay.token';
const PAGE_SIZE = 100;
const STREAM_SILENCE_MS = 7000;

function $(id: string): HTMLElement {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} missing from index.html`);
  return e;
}

type Child = Node | string | null | undefined | false;

/** An element with attributes and children; text always as text nodes. */
function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string | boolean | undefined> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === 'class') e.className = String(v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

function fmtAge(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtMs(ms: number | null): string {
  if (ms === null) return '—';
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function fmtTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtWhen(ms: number): string {
  const d = (ms - Date.now()) / 1000;
  if (Math.abs(d) < 1) return 'now';
  return d > 0 ? `in ${fmtAge(d)}` : `${fmtAge(-d)} ago`;
}

const nf = new Intl.NumberFormat('en-US');
const num = (n: number) => nf.format(n);

function pill(text: string, kind: string = text): HTMLElement {
  return h('span', { class: `pill ${kind}` }, text);
}

// ---- the API -------------------------------------------------------------------------

class Unauthorized extends Error {}
class Refused extends Error {}

function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders(): Record<string, string> {
  const t = token();
  return t ? { authorization: `Bearer ${t}` } : {};
}

async function api<T>(method: string, path: string): Promise<T> {
  const res = await fetch(path, { method, headers: authHeaders(), cache: 'no-store' });
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const err = body && typeof body === 'object' && 'error' in body ? String((body as { error: unknown }).error) : `HTTP ${res.status}`;
  if (res.status === 401) throw new Unauthorized(err);
  if (res.status === 403) throw new Refused(err);
  if (!res.ok) throw new Error(err);
  return body as T;
}

// ---- shell: connection state, banner, toast, confirmation --------------------------------

let last: Overview | null = null;
let stream: AbortController | null = null;

function setConn(live: boolean, text: string): void {
  const c = $('conn');
  c.className = `conn ${live ? 'conn-live' : 'conn-down'}`;
  c.textContent = text;
  c.dataset.state = live ? 'live' : 'disconnected';
}

function banner(text: string | null, kind: 'bad' | 'warn' = 'bad'): void {
  const b = $('banner');
  b.hidden = !text;
  b.className = `banner ${kind}`;
  b.textContent = text ?? '';
}

let toastTimer: number | undefined;
function toast(text: string, bad = false): void {
  const t = $('toast');
  t.textContent = text;
  t.className = `toast${bad ? ' bad' : ''}`;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => (t.hidden = true), 5000);
}

function confirmAction(title: string, text: string, okLabel: string): Promise<boolean> {
  const d = $('confirm') as HTMLDialogElement;
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

// ---- sign-in -----------------------------------------------------------------------------

function showLogin(message = ''): void {
  stream?.abort();
  stream = null;
  $('nav').hidden = true;
  $('logout').hidden = true;
  setConn(false, 'Signed out');
  banner(null);
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', required: true, placeholder: 'admin.token of this node' });
  const error = h('div', { class: 'error', id: 'login-error' }, message);
  const form = h(
    'form',
    { class: 'login', id: 'login' },
    h('h1', {}, 'Sign in'),
    h('div', { class: 'muted' }, 'The bearer token of this relay’s admin endpoint (admin.token or admin.tokenFile in its configuration). It stays in this tab only.'),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    h('button', { type: 'submit' }, 'Sign in'),
    error,
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    void start();
  });
  $('main').replaceChildren(form);
  input.focus();
}

// ---- live stream ---------------------------------------------------------------------------

const queueListeners = new Set<() => void>();

function onOverview(o: Overview): void {
  last = o;
  $('node-name').textContent = `· ${o.node}`;
  document.title = `shadowrelay · ${o.node}`;
  if (!o.ready.ready) banner(`Not ready: ${o.ready.reasons.join('; ')}`);
  else banner(null);
  if (route().view === 'overview') renderOverview(o);
  if (route().view === 'queue') updateQueueCounts(o);
}

function handleEvent(event: string, data: string): void {
  if (event === 'overview') onOverview(JSON.parse(data) as Overview);
  else if (event === 'queue') for (const f of queueListeners) f();
}

async function runStream(): Promise<void> {
  let backoff = 1000;
  for (;;) {
    const ctrl = new AbortController();
    stream = ctrl;
    let silence: number | undefined;
    const arm = () => {
      clearTimeout(silence);
      silence = window.setTimeout(() => ctrl.abort(), STREAM_SILENCE_MS);
    };
    try {
      arm();
      const res = await fetch('/api/events', { headers: authHeaders(), signal: ctrl.signal, cache: 'no-store' });
      if (res.status === 401) {
        clearTimeout(silence);
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin('That token was not accepted.');
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setConn(true, 'Live');
      backoff = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buf += value;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length) handleEvent(event, data.join('\n'));
        }
      }
    } catch {
      /* the daemon went away, or stayed silent: reconnect below */
    } finally {
      clearTimeout(silence);
    }
    if (stream !== ctrl) return; // signed out meanwhile
    // count down to the next try, so "disconnected" says when it tries again
    for (let left = backoff; left > 0; left -= 1000) {
      setConn(false, `Disconnected — retrying in ${Math.ceil(left / 1000)}s`);
      await new Promise((r) => setTimeout(r, Math.min(1000, left)));
      if (stream !== ctrl) return;
    }
    setConn(false, 'Disconnected — reconnecting…');
    backoff = Math.min(backoff * 2, 8000);
  }
}

// ---- routing -------------------------------------------------------------------------------

interface Route {
  view: 'overview' | 'queue' | 'message';
  params: URLSearchParams;
  id?: string;
}

function route(): Route {
  const hash = location.hash.replace(/^#\/?/, '');
  const [pathPart = '', query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  if (pathPart.startsWith('message/')) return { view: 'message', params, id: decodeURIComponent(pathPart.slice(8)) };
  if (pathPart === 'queue') return { view: 'queue', params };
  return { view: 'overview', params };
}

function render(): void {
  queueListeners.clear();
  charts.splice(0).forEach((c) => c.destroy());
  const r = route();
  for (const a of document.querySelectorAll<HTMLAnchorElement>('#nav a')) {
    a.classList.toggle('active', a.dataset.view === (r.view === 'message' ? 'queue' : r.view));
  }
  if (r.view === 'overview') {
    if (last) renderOverview(last);
    else $('main').replaceChildren(h('div', { class: 'empty' }, 'Waiting for the first update…'));
  } else if (r.view === 'queue') void renderQueue(r.params);
  else void renderMessage(r.id!);
}

// ---- overview ------------------------------------------------------------------------------

const charts: UPlotType[] = [];

function card(label: string, value: string, sub: string, kind = '', testId = ''): HTMLElement {
  return h('div', { class: `card ${kind}`, 'data-card': testId || undefined }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), h('div', { class: 'sub' }, sub));
}

function renderOverview(o: Overview): void {
  const main = $('main');
  const q = o.queue;
  const oldest = q.oldestPrimaryAgeSeconds;
  const spoolPct = o.spool.maxBytes > 0 ? (100 * o.spool.bytes) / o.spool.maxBytes : null;
  const peersUp = o.peers.filter((p) => p.link === 'up').length;
  const spoolCard = card('Spool on disk', fmtBytes(o.spool.bytes), o.spool.maxBytes ? `of ${fmtBytes(o.spool.maxBytes)} (${spoolPct!.toFixed(1)} %)` : 'no cap (spool.maxSizeBytes)', spoolPct !== null && spoolPct > 85 ? 'bad' : '', 'spool');
  if (spoolPct !== null) spoolCard.append(h('div', { class: 'bar' }, barFill(spoolPct)));
  const cards = h(
    'div',
    { class: 'grid cards' },
    card('Node', o.node, `v${o.version} · up ${fmtAge((o.now - o.startedAt) / 1000)}`, '', 'node'),
    card('Peers reachable', `${peersUp} / ${o.peers.length}`, peersUp ? 'shadow copies can be made' : 'every message gets 451', peersUp ? '' : 'bad', 'peers'),
    card('Queued', num(q.queued + q.deferred), `${num(q.deferred)} deferred · ${num(q.held)} held`, q.deferred ? 'warn' : '', 'queued'),
    card('Shadow copies', num(q.shadow), `held for peers · ${num(q.discardsPending)} discards owed`, '', 'shadow'),
    card('Oldest message', fmtAge(oldest), oldest === null ? 'queue empty' : 'primary, waiting for delivery', oldest !== null && oldest > 3600 ? 'warn' : '', 'oldest'),
    spoolCard,
    card(`451 rate (${o.recent.windowMinutes} min)`, `${(o.recent.rate451 * 100).toFixed(1)} %`, `${num(o.recent.refused451)} × 451 · ${num(o.recent.accepted)} accepted`, o.recent.refused451 ? 'bad' : '', 'rate451'),
    card('Promotions', num(o.totals.promotions), `${num(o.totals.promotedMessages)} messages promoted`, o.totals.promotions ? 'warn' : '', 'promotions'),
    card('Duplicate risks', num(o.totals.duplicateRisks), 'unavoidable windows, counted', o.totals.duplicateRisks ? 'warn' : '', 'duplicates'),
  );

  const peerRows = o.peers.map((p) =>
    h(
      'tr',
      { 'data-peer': p.name },
      h('td', {}, h('strong', {}, p.name)),
      h('td', {}, pill(p.link)),
      h('td', { class: 'num' }, fmtMs(p.rttMs)),
      h('td', { class: 'num' }, p.lastSeenAgeSeconds === null ? 'never' : `${fmtAge(p.lastSeenAgeSeconds)} ago`),
      h('td', { class: 'num' }, p.lastPutAgeSeconds === null ? '—' : `${fmtAge(p.lastPutAgeSeconds)} ago`),
      h('td', { class: 'num' }, `${fmtMs(p.replication.p50Ms)} / ${fmtMs(p.replication.p99Ms)}`, h('div', { class: 'muted' }, `${num(p.replication.count)} copies`)),
      h('td', { class: 'num' }, num(p.replicationFailures)),
      h('td', { class: 'num' }, num(p.promotions)),
      h('td', { class: 'err wrap', title: p.lastError ?? '' }, p.lastError ?? ''),
    ),
  );
  const peers = h(
    'section',
    { class: 'panel', id: 'peers' },
    h('h2', {}, `Peers (link as seen from ${o.node})`),
    h(
      'table',
      {},
      h(
        'thead',
        {},
        h('tr', {}, ...['Peer', 'Link', 'Round trip', 'Last heartbeat', 'Last shadow copy', `Replication p50 / p99 (${o.peers[0]?.replication.windowMinutes ?? 5} min)`, 'Failures', 'Promotions', 'Last error'].map((t, i) => h('th', { class: i >= 2 && i <= 7 ? 'num' : undefined }, t))),
      ),
      h('tbody', {}, ...peerRows),
    ),
  );

  const chartBox = h('div', { class: 'chart', id: 'chart' });
  const traffic = h('section', { class: 'panel' }, h('h2', {}, 'Messages per minute, last hour'), chartBox, h('div', { class: 'legend-note' }, 'accepted = answered 250; delivered / deferred per recipient at the next hop; refused = every refusal (451 included)'));

  const certRows = o.certificates.map((c) => {
    const days = c.secondsLeft / 86400;
    const kind = days < 0 ? 'bad' : days < 14 ? 'warn' : 'ok';
    return h(
      'tr',
      { 'data-cert': c.certificate },
      h('td', {}, c.certificate === 'shadow_cert' ? 'replication link (this node)' : c.certificate === 'shadow_ca' ? 'replication link CA' : 'STARTTLS'),
      h('td', { class: 'wrap mono' }, c.subject),
      h('td', {}, fmtTime(c.notAfter)),
      h('td', { class: 'num' }, pill(days < 0 ? 'expired' : `${Math.floor(days)} days`, kind)),
    );
  });
  const certs = h(
    'section',
    { class: 'panel' },
    h('h2', {}, 'Certificates'),
    certRows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Used for'), h('th', {}, 'Subject'), h('th', {}, 'Expires'), h('th', { class: 'num' }, 'Left'))), h('tbody', {}, ...certRows))
      : h('div', { class: 'empty' }, 'No certificates configured'),
  );

  const errRows = o.errors.map((e) => h('tr', {}, h('td', { class: 'wrap mono' }, e.error), h('td', { class: 'num' }, num(e.recipients)), h('td', { class: 'num' }, num(e.messages))));
  const errors = h(
    'section',
    { class: 'panel', id: 'errors' },
    h('h2', {}, 'Top next-hop errors (pending recipients)'),
    errRows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Last reply'), h('th', { class: 'num' }, 'Recipients'), h('th', { class: 'num' }, 'Messages'))), h('tbody', {}, ...errRows))
      : h('div', { class: 'empty' }, 'No recipient is waiting on an error'),
  );

  charts.splice(0).forEach((c) => c.destroy());
  main.replaceChildren(h('h1', {}, 'Overview'), cards, peers, traffic, h('div', { class: 'grid two' }, errors, certs));
  drawChart(chartBox, o);
}

function barFill(pct: number): HTMLElement {
  const s = h('span');
  // a CSSOM property, not a style attribute: allowed under style-src 'self'
  s.style.width = `${Math.min(100, Math.max(0, pct)).toFixed(1)}%`;
  return s;
}

function drawChart(box: HTMLElement, o: Overview): void {
  if (!UPlot) {
    box.textContent = 'chart library not loaded';
    return;
  }
  const c = o.series.counts;
  const data: UPlotType.AlignedData = [o.series.minutes.map((m) => m / 1000), c.accepted, c.delivered, c.deferred, c.refused];
  const width = Math.max(300, box.clientWidth || 900);
  const series: UPlotType.Series[] = [
    {},
    { label: 'accepted', stroke: '#2563eb', width: 2, fill: 'rgba(37,99,235,.08)' },
    { label: 'delivered', stroke: '#15803d', width: 2 },
    { label: 'deferred', stroke: '#d97706', width: 2 },
    { label: 'refused', stroke: '#dc2626', width: 2 },
  ];
  const chart = new UPlot({ width, height: 240, series, scales: { y: { range: (_u, _min, max) => [0, Math.max(5, max * 1.15)] } }, axes: [{}, { label: 'per minute', size: 60 }], legend: { live: true } }, data, box);
  charts.push(chart);
}

// ---- queue ---------------------------------------------------------------------------------

const STATES: Array<[string, string]> = [
  ['all', 'All'],
  ['queued', 'Queued'],
  ['deferred', 'Deferred'],
  ['held', 'Held'],
  ['shadow', 'Shadow copies'],
  ['spooled', 'Being accepted'],
];

function stateCount(o: Overview, s: string): number {
  const q = o.queue;
  const m: Record<string, number> = { queued: q.queued, deferred: q.deferred, held: q.held, shadow: q.shadow, spooled: q.spooled };
  return s === 'all' ? q.queued + q.deferred + q.held + q.shadow + q.spooled : (m[s] ?? 0);
}

function updateQueueCounts(o: Overview): void {
  for (const b of document.querySelectorAll<HTMLElement>('[data-state-tab]')) {
    const c = b.querySelector('.count');
    if (c) c.textContent = num(stateCount(o, b.dataset.stateTab!));
  }
}

function setQueueHash(p: URLSearchParams): void {
  const s = p.toString();
  history.replaceState(null, '', `#/queue${s ? `?${s}` : ''}`);
}

function displayState(m: Summary): string {
  if (m.role === 'shadow') return 'shadow';
  if (m.state === 'queued' && m.lastError) return 'deferred';
  return m.state;
}

async function renderQueue(params: URLSearchParams): Promise<void> {
  const main = $('main');
  const state = params.get('state') ?? 'all';
  const search = params.get('q') ?? '';
  const page = Math.max(1, Number(params.get('page') ?? '1') || 1);
  const tabs = h(
    'div',
    { class: 'tabs', role: 'tablist' },
    ...STATES.map(([s, label]) => {
      const b = h('button', { type: 'button', class: s === state ? 'active' : undefined, 'data-state-tab': s }, label, h('span', { class: 'count' }, last ? num(stateCount(last, s)) : ''));
      b.addEventListener('click', () => {
        params.set('state', s);
        params.delete('page');
        setQueueHash(params);
        void renderQueue(params);
      });
      return b;
    }),
  );
  const input = h('input', { type: 'search', id: 'queue-search', placeholder: 'Search queue id, sender or recipient', value: search, 'aria-label': 'Search' });
  let debounce: number | undefined;
  input.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = window.setTimeout(() => {
      if (input.value) params.set('q', input.value);
      else params.delete('q');
      params.delete('page');
      setQueueHash(params);
      void loadPage();
    }, 300);
  });
  const flush = h('button', { type: 'button', class: 'secondary', id: 'flush' }, 'Flush queue');
  flush.addEventListener('click', async () => {
    if (!(await confirmAction('Flush the queue?', 'Every queued message becomes due now and is attempted at once (like postqueue -f).', 'Flush'))) return;
    try {
      const r = await api<{ count: number }>('POST', '/queue/flush');
      toast(`${num(r.count)} message(s) due now`);
    } catch (e) {
      toast((e as Error).message, true);
    }
  });
  const tableBox = h('div', { id: 'queue-table' }, h('div', { class: 'empty' }, 'Loading…'));
  const pager = h('div', { class: 'pager', id: 'pager' });
  main.replaceChildren(h('h1', {}, 'Queue'), h('div', { class: 'toolbar' }, tabs, h('span', { class: 'spacer' }), input, flush), h('section', { class: 'panel' }, tableBox, pager));

  let currentPage = page;
  let loading = false;
  let again = false;
  const loadPage = async (): Promise<void> => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const qs = new URLSearchParams({ state, limit: String(PAGE_SIZE), offset: String((currentPage - 1) * PAGE_SIZE), order: 'newest' });
      const s = params.get('q');
      if (s) qs.set('q', s);
      const p = await api<Page>('GET', `/queue?${qs}`);
      if (route().view !== 'queue') return;
      tableBox.replaceChildren(queueTable(p));
      renderPager(pager, p, (n) => {
        currentPage = n;
        params.set('page', String(n));
        setQueueHash(params);
        void loadPage();
      });
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin('Signed out: the token is no longer accepted.');
      tableBox.replaceChildren(h('div', { class: 'empty' }, `Could not load the queue: ${(e as Error).message}`));
    } finally {
      loading = false;
      if (again) {
        again = false;
        void loadPage();
      }
    }
  };
  queueListeners.clear();
  queueListeners.add(() => void loadPage());
  await loadPage();
}

function queueTable(p: Page): HTMLElement {
  if (p.messages.length === 0) return h('div', { class: 'empty' }, p.total ? 'No messages on this page' : 'No messages match');
  const now = Date.now();
  const rows = p.messages.map((m) => {
    const first = m.recipients[0]?.address ?? '';
    const more = m.recipients.length > 1 ? ` +${m.recipients.length - 1}` : '';
    const st = displayState(m);
    return h(
      'tr',
      { 'data-id': m.id },
      h('td', { class: 'mono' }, h('a', { href: `#/message/${encodeURIComponent(m.id)}` }, m.id)),
      h('td', {}, m.role),
      h('td', {}, pill(st)),
      h('td', { class: 'num' }, fmtAge((now - m.receivedAt) / 1000)),
      h('td', { class: 'wrap' }, m.sender || '<>'),
      h('td', { class: 'wrap', title: m.recipients.map((r) => r.address).join(', ') }, first + more),
      h('td', { class: 'num' }, String(m.attempts)),
      h('td', {}, m.role === 'shadow' || m.state === 'held' ? '—' : fmtWhen(m.nextAttemptAt)),
      h('td', { class: 'err', title: m.lastError ?? '' }, m.lastError ?? ''),
    );
  });
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, ...['Queue ID', 'Role', 'State', 'Age', 'Sender', 'Recipients', 'Attempts', 'Next attempt', 'Last error'].map((t, i) => h('th', { class: i === 3 || i === 6 ? 'num' : undefined }, t)))),
    h('tbody', {}, ...rows),
  );
}

function renderPager(box: HTMLElement, p: Page, go: (page: number) => void): void {
  const pages = Math.max(1, Math.ceil(p.total / p.limit));
  const page = Math.floor(p.offset / p.limit) + 1;
  const from = p.total === 0 ? 0 : p.offset + 1;
  const to = p.offset + p.messages.length;
  const prev = h('button', { type: 'button', class: 'secondary', disabled: page <= 1 }, '‹ Newer');
  const next = h('button', { type: 'button', class: 'secondary', disabled: page >= pages }, 'Older ›');
  prev.addEventListener('click', () => go(page - 1));
  next.addEventListener('click', () => go(page + 1));
  box.replaceChildren(h('span', { class: 'muted', id: 'page-info' }, `${num(from)}–${num(to)} of ${num(p.total)} · page ${num(page)} of ${num(pages)}`), prev, next);
}

// ---- one message -------------------------------------------------------------------------

async function renderMessage(id: string): Promise<void> {
  const main = $('main');
  let m: MessageView;
  try {
    m = await api<MessageView>('GET', `/queue/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin('Signed out: the token is no longer accepted.');
    main.replaceChildren(h('h1', {}, `Message ${id}`), h('div', { class: 'panel empty', id: 'message-gone' }, (e as Error).message), h('a', { href: '#/queue' }, '← back to the queue'));
    return;
  }
  const isPrimary = m.role === 'primary' && m.state !== 'spooled';
  const act = async (label: string, text: string, method: string, path: string, after: 'reload' | 'queue') => {
    if (!(await confirmAction(`${label} ${m.id}?`, text, label))) return;
    try {
      const r = await api<{ id: string; result: string }>(method, path);
      toast(`${r.id}: ${r.result}`);
      if (after === 'queue') location.hash = '#/queue';
      else void renderMessage(id);
    } catch (e) {
      toast((e as Error).message, true);
    }
  };
  const button = (label: string, cls: string, onClick: () => void, enabled = true) => {
    const b = h('button', { type: 'button', class: cls, disabled: !enabled, 'data-action': label.toLowerCase().replace(/[^a-z]+/g, '-') }, label);
    b.addEventListener('click', onClick);
    return b;
  };
  const enc = encodeURIComponent(m.id);
  const actions = h(
    'div',
    { class: 'actions' },
    button('Retry now', '', () => void act('Retry now', 'The message becomes due at once and is attempted now.', 'POST', `/queue/${enc}/retry`, 'reload'), isPrimary && m.state === 'queued'),
    m.state === 'held'
      ? button('Release', '', () => void act('Release', 'The message is delivered again (due at once).', 'POST', `/queue/${enc}/release`, 'reload'), isPrimary)
      : button('Hold', 'secondary', () => void act('Hold', 'The message stays in the queue and is not delivered until released (like postsuper -h).', 'POST', `/queue/${enc}/hold`, 'reload'), isPrimary && m.state === 'queued'),
    button('Delete', 'danger', () => void act('Delete', 'The message is deleted without delivery and without telling the sender; the peer discards its shadow copy (like postsuper -d).', 'DELETE', `/queue/${enc}`, 'queue'), isPrimary),
    button('Delete and bounce', 'danger', () => void act('Delete and bounce', 'The pending recipients fail and the sender gets a bounce (a delivery status notification); then the message is deleted on both nodes.', 'DELETE', `/queue/${enc}?bounce=1`, 'queue'), isPrimary),
  );
  const note = m.role === 'shadow' ? h('div', { class: 'banner warn' }, `A shadow copy held for ${m.origin}: act on it at ${m.origin}, its primary.`) : null;
  const kv = (pairs: Array<[string, Child]>) => h('dl', { class: 'kv' }, ...pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const envelope = h(
    'section',
    { class: 'panel' },
    h('h2', {}, 'Envelope'),
    kv([
      ['Sender', m.sender || '<> (null sender)'],
      ['Role / state', h('span', {}, pill(displayState(m)), ` ${m.role}/${m.state}`)],
      ['Received', `${fmtTime(m.receivedAt)} (${fmtAge((Date.now() - m.receivedAt) / 1000)} ago)`],
      ['From client', m.client ?? 'unknown'],
      ['Size', fmtBytes(m.size)],
      ['Origin', m.origin],
      ['Shadow copy on', m.shadowPeer ?? (m.role === 'shadow' ? 'this node' : 'none')],
      ['Attempts', String(m.attempts)],
      ['Next attempt', m.role === 'shadow' || m.state === 'held' ? '—' : `${fmtTime(m.nextAttemptAt)} (${fmtWhen(m.nextAttemptAt)})`],
      ['Last error', m.lastError ?? '—'],
    ]),
  );
  const rcpts = h(
    'section',
    { class: 'panel' },
    h('h2', {}, `Recipients (${m.recipients.length})`),
    h(
      'table',
      { id: 'recipients' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Address'), h('th', {}, 'State'), h('th', {}, 'Last reply'))),
      h('tbody', {}, ...m.recipients.map((r) => h('tr', {}, h('td', {}, r.address), h('td', {}, pill(r.state)), h('td', { class: 'wrap mono' }, r.lastError ?? '')))),
    ),
  );
  const hist = h('section', { class: 'panel' }, h('h2', {}, 'History'), h('ol', { class: 'history' }, ...m.history.map((e) => h('li', {}, h('span', { class: 'when' }, e.at === null ? '' : fmtTime(e.at)), e.event))));
  const headers = h('section', { class: 'panel' }, h('h2', {}, 'Headers'), h('pre', { class: 'headers', id: 'headers' }, m.headers.replace(/\r\n/g, '\n')), h('div', { class: 'legend-note' }, 'The body is not shown (shadowrelay queue show ID --body prints it).'));
  main.replaceChildren(
    h('div', { class: 'muted' }, h('a', { href: '#/queue' }, '← Queue')),
    h('h1', { class: 'mono', id: 'message-id' }, m.id),
    ...(note ? [note] : []),
    actions,
    h('div', { class: 'grid two' }, h('div', {}, envelope, rcpts), h('div', {}, hist, headers)),
  );
}

// ---- start ---------------------------------------------------------------------------------

async function start(): Promise<void> {
  try {
    last = await api<Overview>('GET', '/api/overview');
  } catch (e) {
    if (e instanceof Unauthorized) {
      const had = token() !== null;
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(had ? 'That token was not accepted.' : '');
    }
    if (e instanceof Refused) {
      setConn(false, 'Refused');
      $('main').replaceChildren(h('div', { class: 'login' }, h('h1', {}, 'Dashboard not available'), h('p', { id: 'refused' }, e.message)));
      return;
    }
    setConn(false, 'Disconnected — retrying');
    $('main').replaceChildren(h('div', { class: 'empty' }, `The relay does not answer (${(e as Error).message}); retrying…`));
    setTimeout(() => void start(), 2000);
    return;
  }
  $('nav').hidden = false;
  $('logout').hidden = token() === null;
  onOverview(last);
  render();
  void runStream();
}

window.addEventListener('hashchange', render);
$('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
});
void start();
