// The gateway's dashboard: reads the /api/v5 API of the server it came from and shows it.
//
// Client ids, user names, topics and device answers are chosen by whoever connects, so
// they only ever reach the page as text (textContent, Text nodes, attribute values set
// through the DOM), never as markup.

const AUTH = 'gateway-dashboard-auth';
const POLL_MS = 3000;
const HISTORY = 60;
const PAGE_SIZE = 50;
const LOOKUP_TIMEOUT_MS = 15000;
const SAME_ANSWER_MS = 3000;
const PROTOCOLS = ['MQTT', 'MQTT-SN', 'CoAP', 'LwM2M', 'STOMP'];
// The gateway path under /api/v5/gateways of each protocol but MQTT.
const GATEWAY_OF = { 'MQTT-SN': 'mqttsn', CoAP: 'coap', LwM2M: 'lwm2m', STOMP: 'stomp' };

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** An element with properties (never innerHTML) and children appended as nodes or text. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''));
  return node;
}

function basic(key, secret) {
  let binary = '';
  for (const byte of new TextEncoder().encode(`${key}:${secret}`)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

async function request(method, path, auth = sessionStorage.getItem(AUTH)) {
  const headers = { Accept: 'application/json' };
  if (auth) headers.Authorization = `Basic ${auth}`;
  // 'omit': the browser adds no credentials of its own and never prompts for them on a
  // 401; the key goes only in the header set here.
  const response = await fetch(path, { method, headers, credentials: 'omit', cache: 'no-store' });
  const text = await response.text();
  let body = text;
  if ((response.headers.get('content-type') || '').includes('json') && text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    const fields = body && typeof body === 'object' ? body : {};
    throw new ApiError(response.status, String(fields.code ?? ''), String(fields.message ?? ''));
  }
  return body;
}

/** A request of a page: a 401 asks for the key. */
async function api(method, path) {
  try {
    return await request(method, path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) askForKey();
    throw error;
  }
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

const enc = encodeURIComponent;

function formatNumber(value) {
  return typeof value === 'number' ? value.toLocaleString('en') : '–';
}

function formatTime(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? String(text ?? '') : date.toLocaleString();
}

function peerOf(client) {
  if (!client.ip_address) return '';
  const host = String(client.ip_address).includes(':') ? `[${client.ip_address}]` : String(client.ip_address);
  return client.port == null ? host : `${host}:${client.port}`;
}

function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text;
  banner.hidden = false;
}

function clearBanner() {
  $('banner').hidden = true;
}

function describe(error) {
  if (error instanceof ApiError) return `${error.status} ${error.code} ${error.message}`.trim();
  return `The gateway cannot be reached (${error.message})`;
}

// --- pages and polling ---------------------------------------------------------------

let generation = 0;
let currentPage = null;

function pageName() {
  const match = /^#\/([a-z0-9]+)/.exec(location.hash);
  return match && pages[match[1]] ? match[1] : 'overview';
}

function route() {
  const name = pageName();
  currentPage = name;
  for (const key of Object.keys(pages)) {
    $(`page-${key}`).hidden = key !== name || !$('login').hidden;
    $(`nav-${key}`).classList.toggle('current', key === name);
  }
  if ($('login').hidden) start(name);
}

/** Refreshes page `name` now and every POLL_MS until another page or the login replaces it. */
function start(name) {
  const mine = ++generation;
  const loop = async () => {
    if (mine !== generation) return;
    try {
      await pages[name].refresh();
      if (mine === generation) clearBanner();
    } catch (error) {
      if (mine !== generation || (error instanceof ApiError && error.status === 401)) return;
      if (!pages[name].handle?.(error)) showBanner(describe(error));
    }
    if (mine === generation) setTimeout(loop, POLL_MS);
  };
  loop();
}

// --- login ---------------------------------------------------------------------------

function askForKey() {
  generation++;
  $('login').hidden = false;
  $('logout').hidden = true;
  for (const key of Object.keys(pages)) $(`page-${key}`).hidden = true;
  clearBanner();
  $('login-key').focus();
}

async function logIn(event) {
  event.preventDefault();
  const auth = basic($('login-key').value, $('login-secret').value);
  const error = $('login-error');
  $('login-submit').disabled = true;
  try {
    await request('GET', '/api/v5/stats?aggregate=true', auth);
    sessionStorage.setItem(AUTH, auth);
    $('login-secret').value = '';
    error.hidden = true;
    $('login').hidden = true;
    $('logout').hidden = false;
    route();
  } catch (failure) {
    error.textContent =
      failure instanceof ApiError && failure.status === 401
        ? 'The gateway refused this key and secret.'
        : describe(failure);
    error.hidden = false;
  } finally {
    $('login-submit').disabled = false;
  }
}

function logOut() {
  sessionStorage.removeItem(AUTH);
  askForKey();
}

// --- overview ------------------------------------------------------------------------

const samples = [];

/** `gateway_listener_...{listener="..."} value` lines of the Prometheus text, by listener. */
function listenerCounters(text) {
  const byListener = new Map();
  const line = /^gateway_listener_([A-Za-z0-9_]+)\{listener="((?:[^"\\]|\\.)*)"\} (\S+)$/;
  for (const row of String(text).split('\n')) {
    const match = line.exec(row);
    if (!match) continue;
    const listener = match[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const name = match[1].replace(/_total$/, '').replaceAll('_', ' ');
    if (!byListener.has(listener)) byListener.set(listener, []);
    byListener.get(listener).push(`${name}: ${match[3]}`);
  }
  return byListener;
}

function svg(tag, attributes) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function drawChart() {
  const chart = $('rate-chart');
  const [left, right, top, bottom] = [44, 592, 8, 150];
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = (samples[i].at - samples[i - 1].at) / 1000;
    if (seconds <= 0) continue;
    rates.push({
      received: Math.max(0, (samples[i].received - samples[i - 1].received) / seconds),
      sent: Math.max(0, (samples[i].sent - samples[i - 1].sent) / seconds),
    });
  }
  const peak = Math.max(1, ...rates.map((r) => Math.max(r.received, r.sent)));
  const scale = 10 ** Math.floor(Math.log10(peak));
  const max = Math.ceil(peak / scale) * scale;
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * (bottom - top);
    nodes.push(svg('line', { x1: left, x2: right, y1: y, y2: y, class: 'grid' }));
    const label = svg('text', { x: left - 6, y: y + 3, 'text-anchor': 'end', class: 'axis-label' });
    label.textContent = (max * fraction).toLocaleString('en', { maximumFractionDigits: 1 });
    nodes.push(label);
  }
  const step = (right - left) / (HISTORY - 1);
  const offset = HISTORY - rates.length;
  const x = (i) => (left + (offset + i) * step).toFixed(1);
  for (const series of ['received', 'sent']) {
    const y = (r) => (bottom - (r[series] / max) * (bottom - top)).toFixed(1);
    if (!rates.length) continue;
    nodes.push(svg('polyline', { points: rates.map((r, i) => `${x(i)},${y(r)}`).join(' '), class: series }));
    // The latest value marked, so that a line of one point still shows.
    const last = rates.length - 1;
    nodes.push(svg('circle', { cx: x(last), cy: y(rates[last]), r: 3, class: `${series} mark` }));
  }
  chart.replaceChildren(...nodes);
  const last = rates[rates.length - 1];
  $('rate-now').textContent = last
    ? `now: ${last.received.toFixed(1)} received/s, ${last.sent.toFixed(1)} sent/s`
    : 'measuring…';
}

const overview = {
  async refresh() {
    const [stats, metrics, listeners, connected, prometheus] = await Promise.all([
      api('GET', '/api/v5/stats?aggregate=true'),
      api('GET', '/api/v5/metrics?aggregate=true'),
      api('GET', '/api/v5/listeners'),
      api('GET', `/api/v5/clients${query({ conn_state: 'connected', limit: 1000 })}`),
      api('GET', '/metrics'),
    ]);
    // Counted from the page of clients when it holds them all; else one count per protocol.
    const perProtocol = connected.meta?.hasnext
      ? await Promise.all(
          PROTOCOLS.map(async (proto) => {
            const page = await api('GET', `/api/v5/clients${query({ proto_name: proto, conn_state: 'connected', limit: 1 })}`);
            return page.meta?.count;
          }),
        )
      : PROTOCOLS.map((proto) => (connected.data ?? []).filter((client) => client.proto_name === proto).length);
    $('stat-connections').textContent = formatNumber(stats['connections.count']);
    $('stat-sessions').textContent = formatNumber(stats['sessions.count']);
    $('stat-subscriptions').textContent = formatNumber(stats['subscriptions.count']);
    $('stat-retained').textContent = formatNumber(stats['retained.count']);

    $('by-protocol').tBodies[0].replaceChildren(
      ...PROTOCOLS.map((proto, i) =>
        el('tr', { dataset: { protocol: proto } },
          el('td', {}, proto),
          el('td', { class: 'num' }, formatNumber(perProtocol[i]))),
      ),
    );

    samples.push({ at: performance.now(), received: metrics['messages.received'] ?? 0, sent: metrics['messages.sent'] ?? 0 });
    while (samples.length > HISTORY + 1) samples.shift();
    drawChart();

    const perListener = new Map();
    for (const client of connected.data ?? []) {
      perListener.set(client.listener, (perListener.get(client.listener) ?? 0) + 1);
    }
    const more = connected.meta?.hasnext ? '+' : '';
    const counters = listenerCounters(prometheus);
    $('listeners').tBodies[0].replaceChildren(
      ...listeners.map((listener) =>
        el('tr', { dataset: { listener: listener.id } },
          el('td', {}, listener.id),
          el('td', {}, listener.protocol),
          el('td', {}, listener.type),
          el('td', {}, listener.bind),
          el('td', {}, listener.running ? 'yes' : listener.enable ? 'not started' : 'disabled'),
          el('td', { class: 'num' }, `${perListener.get(listener.id) ?? 0}${more}`),
          el('td', {}, (counters.get(listener.id) ?? []).join(', ') || '–')),
      ),
    );
  },
};

// --- clients -------------------------------------------------------------------------

function pager(prefix, state, meta) {
  $(`${prefix}-page`).textContent = `page ${state.page} · ${formatNumber(meta?.count ?? 0)} in all`;
  $(`${prefix}-prev`).disabled = state.page <= 1;
  $(`${prefix}-next`).disabled = !meta?.hasnext;
}

function kickPath(client) {
  const gateway = GATEWAY_OF[client.proto_name];
  return gateway
    ? `/api/v5/gateways/${gateway}/clients/${enc(client.clientid)}`
    : `/api/v5/clients/${enc(client.clientid)}`;
}

const clients = {
  state: { page: 1, like: '', proto: '' },
  shown: null,
  async refresh() {
    const { page, like, proto } = this.state;
    const answer = await api('GET', `/api/v5/clients${query({ page, limit: PAGE_SIZE, like_clientid: like, proto_name: proto })}`);
    pager('clients', this.state, answer.meta);
    // Rows are only rebuilt when the list changed, so a button is not replaced under the pointer.
    const fingerprint = JSON.stringify(answer.data);
    if (fingerprint === this.shown) return;
    this.shown = fingerprint;
    $('clients').tBodies[0].replaceChildren(...answer.data.map((client) => this.row(client)));
  },
  row(client) {
    const kick = el('button', { type: 'button', class: 'kick', textContent: 'Kick', title: 'Kick this client out' });
    kick.addEventListener('click', () => this.kick(client, kick));
    return el('tr', { dataset: { clientid: client.clientid, protocol: client.proto_name } },
      el('td', {}, client.proto_name),
      el('td', { class: 'text' }, client.clientid),
      el('td', { class: 'text' }, client.username ?? ''),
      el('td', {}, peerOf(client)),
      el('td', {}, formatTime(client.connected_at)),
      el('td', {}, client.conn_state),
      el('td', {}, kick));
  },
  async kick(client, button) {
    button.disabled = true;
    const status = $('clients-status');
    status.classList.remove('error');
    try {
      await api('DELETE', kickPath(client));
      status.textContent = `Kicked ${client.proto_name} client ${client.clientid}.`;
    } catch (error) {
      status.textContent = `Kicking ${client.clientid} failed: ${describe(error)}`;
      status.classList.add('error');
    }
    this.shown = null;
    if (currentPage === 'clients') start('clients');
  },
};

// --- subscriptions -------------------------------------------------------------------

const subscriptions = {
  state: { page: 1, clientid: '', topic: '', match: '' },
  async refresh() {
    const { page, clientid, topic, match } = this.state;
    const answer = await api(
      'GET',
      `/api/v5/subscriptions${query({ page, limit: PAGE_SIZE, clientid, topic, match_topic: match })}`,
    );
    pager('subs', this.state, answer.meta);
    $('subs-status').textContent = '';
    $('subs-status').classList.remove('error');
    $('subscriptions').tBodies[0].replaceChildren(
      ...answer.data.map((sub) =>
        el('tr', { dataset: { clientid: sub.clientid } },
          el('td', { class: 'text' }, sub.clientid),
          el('td', { class: 'text' }, sub.topic),
          el('td', { class: 'num' }, sub.qos),
          el('td', {}, sub.nl ? 'yes' : 'no'),
          el('td', {}, sub.rap ? 'yes' : 'no'),
          el('td', { class: 'num' }, sub.rh)),
      ),
    );
  },
  handle(error) {
    if (!(error instanceof ApiError && error.status === 404)) return false;
    const status = $('subs-status');
    status.textContent = 'This gateway does not serve /api/v5/subscriptions.';
    status.classList.add('error');
    $('subscriptions').tBodies[0].replaceChildren();
    return true;
  },
};

// --- LwM2M devices -------------------------------------------------------------------

const lwm2m = {
  selected: null,
  shown: null,
  // Bumped by each command, so that an older command's lookup stops updating the page.
  command: 0,
  async refresh() {
    const answer = await api('GET', `/api/v5/gateways/lwm2m/clients${query({ limit: 1000 })}`);
    $('devices-status').textContent = answer.data.length ? '' : 'No LwM2M device is registered.';
    const fingerprint = JSON.stringify(answer.data);
    if (fingerprint === this.shown) return;
    this.shown = fingerprint;
    $('devices').tBodies[0].replaceChildren(
      ...answer.data.map((device) => {
        const manage = el('button', { type: 'button', textContent: 'Manage' });
        manage.addEventListener('click', () => this.select(device.clientid));
        const row = el('tr', { dataset: { clientid: device.clientid } },
          el('td', { class: 'text' }, device.clientid),
          el('td', {}, peerOf(device)),
          el('td', {}, formatTime(device.connected_at)),
          el('td', {}, device.conn_state),
          el('td', {}, manage));
        row.classList.toggle('selected', device.clientid === this.selected);
        return row;
      }),
    );
  },
  select(clientid) {
    this.selected = clientid;
    this.command++;
    $('device-name').textContent = clientid;
    $('device').hidden = false;
    this.showResult({});
    for (const row of $('devices').tBodies[0].rows) row.classList.toggle('selected', row.dataset.clientid === clientid);
  },
  showResult(result) {
    $('lookup-action').textContent = result.action ?? '';
    $('lookup-path').textContent = result.path ?? '';
    $('lookup-code').textContent = result.code ?? '';
    $('lookup-msg').textContent = result.codeMsg ?? '';
    const content = result.content;
    $('lookup-content').textContent =
      content === undefined || content === null ? '' : typeof content === 'string' ? content : JSON.stringify(content, null, 2);
  },
  base() {
    return `/api/v5/gateways/lwm2m/clients/${enc(this.selected)}`;
  },
  /**
   * Sends `action` and shows the device's answer once the lookup has it. The lookup keeps
   * only the last answer for a path and action, with nothing telling one from the next:
   * an answer is taken as this command's once it differs from what the lookup held before
   * the command, or, the same, once the device has had SAME_ANSWER_MS to change it.
   */
  async send(action, params, lookupAction = action) {
    if (!this.selected) return;
    const mine = ++this.command;
    const base = this.base();
    const lookup = `${base}/lookup${query({ path: params.path, action: lookupAction })}`;
    this.showResult({ action: lookupAction, path: params.path, codeMsg: 'sending…' });
    try {
      const before = JSON.stringify(await api('GET', lookup));
      await api('POST', `${base}/${action}${query(params)}`);
      if (mine !== this.command) return;
      this.showResult({ action: lookupAction, path: params.path, codeMsg: 'waiting for the device…' });
      const sent = performance.now();
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, 300));
        const result = await api('GET', lookup);
        if (mine !== this.command) return;
        const waited = performance.now() - sent;
        const answered = result.codeMsg !== 'reply_not_received';
        if (answered && (JSON.stringify(result) !== before || waited > SAME_ANSWER_MS)) {
          this.showResult(result);
          return;
        }
        if (waited > LOOKUP_TIMEOUT_MS) {
          this.showResult({ ...result, codeMsg: 'no answer from the device yet' });
          return;
        }
      }
    } catch (error) {
      if (mine !== this.command) return;
      let text = describe(error);
      if (error instanceof ApiError && error.status === 404) {
        text = error.code === 'NOT_FOUND'
          ? 'This gateway does not serve LwM2M commands (404).'
          : 'The device is no longer registered (404).';
      }
      this.showResult({ action: lookupAction, path: params.path, codeMsg: text });
    }
  },
};

const pages = { overview, clients, subscriptions, lwm2m };

// --- wiring --------------------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', logIn);
  $('logout').addEventListener('click', logOut);
  $('logout').hidden = !sessionStorage.getItem(AUTH);
  window.addEventListener('hashchange', route);

  $('clients-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    Object.assign(clients.state, { page: 1, like: $('clients-like').value, proto: $('clients-proto').value });
    start('clients');
  });
  $('subs-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    Object.assign(subscriptions.state, {
      page: 1,
      clientid: $('subs-clientid').value,
      topic: $('subs-topic').value,
      match: $('subs-match').value,
    });
    start('subscriptions');
  });
  for (const [prefix, page, name] of [['clients', clients, 'clients'], ['subs', subscriptions, 'subscriptions']]) {
    $(`${prefix}-prev`).addEventListener('click', () => {
      page.state.page = Math.max(1, page.state.page - 1);
      start(name);
    });
    $(`${prefix}-next`).addEventListener('click', () => {
      page.state.page += 1;
      start(name);
    });
  }

  $('read-form').addEventListener('submit', (event) => {
    event.preventDefault();
    lwm2m.send('read', { path: $('read-path').value });
  });
  $('discover-submit').addEventListener('click', () => lwm2m.send('discover', { path: $('read-path').value }));
  $('observe-submit').addEventListener('click', () => lwm2m.send('observe', { path: $('read-path').value, enable: true }));
  $('unobserve-submit').addEventListener('click', () =>
    lwm2m.send('observe', { path: $('read-path').value, enable: false }, 'cancel-observe'),
  );
  $('write-form').addEventListener('submit', (event) => {
    event.preventDefault();
    lwm2m.send('write', { path: $('write-path').value, type: $('write-type').value, value: $('write-value').value });
  });

  request('GET', '/api/v5/status?format=json', null)
    .then((status) => {
      $('node').textContent = `${status.node_name} · ${status.rel_vsn} · ${status.status}`;
    })
    .catch(() => {});
  route();
}

wire();
