/**
 * The service map page: flows from the agent's live stream (server-sent events
 * from /api/flows/stream) drawn as a cytoscape graph of workloads, with a flow
 * table beneath. Both follow the filters in the bar (kept in the URL).
 */
import cytoscape from 'cytoscape';
import fcose from 'cytoscape-fcose';
import './styles.css';
import {
  EMPTY_FILTERS,
  Endpoint,
  Filters,
  Flow,
  Graph,
  Peer,
  ViewFlow,
  agentQuery,
  buildGraph,
  connectionOutcomes,
  dropReason,
  flowKey,
  l7Text,
  matches,
  peerOf,
  portProto,
  portsOf,
  tcpFlags,
  viewFlow,
} from './model';

const MAX_FLOWS = 10_000;
const MAX_ROWS = 500;
const RENDER_EVERY_MS = 250;
const REFRESH_ENDPOINTS_MS = 5_000;
const RETRY_MS = 3_000;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

// ---- state -------------------------------------------------------------------

const flows = new Map<string, ViewFlow>();
let ordered: ViewFlow[] = [];
let orderDirty = false;
let endpoints: Endpoint[] = [];
const podLabels = new Map<string, string[]>();
const identityLabels = new Map<number, string[]>();
let filters: Filters = readFiltersFromUrl();
let dirty = true;
let connection: { state: 'connecting' | 'live' | 'error'; message: string } = { state: 'connecting', message: 'connecting…' };

function readFiltersFromUrl(): Filters {
  const q = new URLSearchParams(location.search);
  const f: Filters = { ...EMPTY_FILTERS };
  for (const k of Object.keys(f) as (keyof Filters)[]) f[k] = q.get(k) ?? '';
  return f;
}

function writeFiltersToUrl(): void {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, '', s ? `?${s}` : location.pathname);
}

function addFlow(f: Flow): void {
  if (!f || typeof f !== 'object' || !f.source || !f.destination) return;
  const key = flowKey(f);
  if (flows.has(key)) return;
  const v = viewFlow(f, podLabels, identityLabels);
  flows.set(key, v);
  const last = ordered[ordered.length - 1];
  if (last && f.time < last.flow.time) orderDirty = true;
  ordered.push(v);
  if (ordered.length > MAX_FLOWS * 1.1) {
    sortFlows();
    for (const old of ordered.splice(0, ordered.length - MAX_FLOWS)) flows.delete(flowKey(old.flow));
  }
  dirty = true;
}

function sortFlows(): void {
  if (!orderDirty) return;
  ordered.sort((a, b) => (a.flow.time < b.flow.time ? -1 : a.flow.time > b.flow.time ? 1 : 0));
  orderDirty = false;
}

/** Labels may arrive after the flows that need them: recompute peers when they change. */
function reviewFlows(): void {
  for (const [k, v] of flows) {
    const nv = viewFlow(v.flow, podLabels, identityLabels);
    flows.set(k, nv);
  }
  ordered = [...flows.values()];
  orderDirty = true;
  dirty = true;
}

// ---- the live stream -----------------------------------------------------------

let source: EventSource | null = null;
/** Flows the agent dropped for this page because it did not keep up. */
let lostFlows = 0;
let streamQuery = '';
let retryTimer: number | undefined;

function setConnection(state: typeof connection.state, message: string): void {
  connection = { state, message };
  const el = $('status');
  el.textContent = message;
  el.className = `status status-${state}`;
  el.title = message;
}

function connect(): void {
  clearTimeout(retryTimer);
  source?.close();
  const q = agentQuery(filters).toString();
  streamQuery = q;
  const es = new EventSource(`/api/flows/stream${q ? `?${q}` : ''}`);
  source = es;
  setConnection('connecting', 'connecting…');
  es.addEventListener('ready', () => setConnection('live', 'live'));
  es.addEventListener('lost', (ev) => {
    try {
      const n = Number(JSON.parse((ev as MessageEvent).data).lost_events?.num_events_lost) || 0;
      lostFlows += n;
      setConnection('live', `live — ${lostFlows} flows dropped: client too slow`);
    } catch {
      /* not a lost_events record */
    }
  });
  es.onmessage = (ev) => {
    try {
      addFlow(JSON.parse(ev.data));
    } catch {
      /* not a flow record */
    }
    if (connection.state !== 'live') setConnection('live', lostFlows ? `live — ${lostFlows} flows dropped: client too slow` : 'live');
  };
  es.addEventListener('apierror', (ev) => {
    let msg = 'the flow stream failed';
    try {
      const d = JSON.parse((ev as MessageEvent).data);
      msg = d.status === 404 ? 'the agent has no flow API (GET /v1/flows): is it up to date?' : d.error || msg;
    } catch {
      /* keep the generic message */
    }
    es.close();
    if (source === es) {
      setConnection('error', `${msg} — retrying`);
      retryTimer = window.setTimeout(connect, RETRY_MS);
    }
  });
  es.onerror = () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      setConnection('error', 'UI server unreachable — retrying');
      retryTimer = window.setTimeout(connect, RETRY_MS);
    } else setConnection('connecting', 'reconnecting…');
  };
}

async function getJson<T>(path: string): Promise<T> {
  const r = await fetch(path, { headers: { accept: 'application/json' } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return (await r.json()) as T;
}

async function refreshEndpoints(): Promise<void> {
  try {
    const [eps, ids] = await Promise.all([getJson<Endpoint[]>('/api/endpoint'), getJson<{ id: number; labels: string[] }[]>('/api/identity').catch(() => [])]);
    endpoints = Array.isArray(eps) ? eps : [];
    let changed = false;
    for (const e of endpoints) {
      if (!e.podName) continue;
      const key = `${e.namespace || 'default'}/${e.podName}`;
      const labels = e.labels ?? [];
      if ((podLabels.get(key) ?? []).join('\n') !== labels.join('\n')) {
        podLabels.set(key, labels);
        changed = true;
      }
    }
    for (const i of Array.isArray(ids) ? ids : []) {
      if ((identityLabels.get(i.id) ?? []).join('\n') !== (i.labels ?? []).join('\n')) {
        identityLabels.set(i.id, i.labels ?? []);
        changed = true;
      }
    }
    if (changed) reviewFlows();
    dirty = true;
  } catch {
    /* the stream's status line tells about the agent */
  }
}

async function loadStatus(): Promise<void> {
  try {
    const s = await getJson<{ node?: string; version?: string }>('/api/status');
    $('node-name').textContent = s.node ? `node ${s.node}` : '';
  } catch {
    /* shown by the stream status */
  }
}

// ---- the map ----------------------------------------------------------------

cytoscape.use(fcose);

const COLORS = { forwarded: '#1f9d55', dropped: '#d64545', mixed: '#e08e0b', l7Denied: '#8e3fc7' };

const cy = cytoscape({
  container: $('graph'),
  minZoom: 0.2,
  maxZoom: 3,
  boxSelectionEnabled: false,
  style: [
    {
      selector: 'node',
      style: {
        label: 'data(label)',
        'font-family': 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
        'font-size': 14,
        'font-weight': 600,
        color: '#1d2433',
        'text-valign': 'bottom',
        'text-margin-y': 6,
        'text-wrap': 'wrap',
        'text-max-width': '160px',
        width: 46,
        height: 46,
        'background-color': '#3b6fd8',
        'border-width': 3,
        'border-color': '#ffffff',
        'overlay-opacity': 0,
      },
    },
    { selector: 'node.kind-world', style: { 'background-color': '#7b4fd6', shape: 'ellipse' } },
    { selector: 'node.kind-host', style: { 'background-color': '#5d6778', shape: 'round-rectangle' } },
    { selector: 'node.kind-cidr', style: { 'background-color': '#c26a13', shape: 'round-hexagon' } },
    { selector: 'node.kind-reserved, node.kind-unknown', style: { 'background-color': '#8a94a6', shape: 'round-diamond' } },
    { selector: 'node.idle', style: { 'background-color': '#a9b8d8' } },
    {
      selector: ':parent',
      style: {
        shape: 'round-rectangle',
        'background-color': '#eef2f9',
        'background-opacity': 1,
        'border-width': 1,
        'border-color': '#c3cde0',
        'border-style': 'solid',
        label: 'data(label)',
        'text-valign': 'top',
        'text-halign': 'center',
        'text-margin-y': -4,
        'font-size': 12,
        'font-weight': 500,
        color: '#58647a',
        padding: '28px',
      },
    },
    { selector: 'node:selected', style: { 'border-color': '#1d2433', 'border-width': 3 } },
    {
      selector: 'edge',
      style: {
        width: 3,
        'curve-style': 'bezier',
        'target-arrow-shape': 'triangle',
        'arrow-scale': 1.3,
        'line-color': COLORS.forwarded,
        'target-arrow-color': COLORS.forwarded,
        label: 'data(label)',
        'font-size': 12,
        color: '#1d2433',
        'text-background-color': '#ffffff',
        'text-background-opacity': 0.9,
        'text-background-padding': '2px',
        'text-background-shape': 'roundrectangle',
        'text-rotation': 'autorotate',
        'overlay-opacity': 0,
      },
    },
    { selector: 'edge.dropped', style: { 'line-color': COLORS.dropped, 'target-arrow-color': COLORS.dropped, 'line-style': 'dashed', 'target-arrow-shape': 'tee' } },
    { selector: 'edge.mixed', style: { 'line-color': COLORS.mixed, 'target-arrow-color': COLORS.mixed } },
    // L7 (HTTP/DNS through the proxy): a double line; requests the proxy denied (403): purple, dotted, barred.
    { selector: 'edge.l7', style: { 'line-style': 'double', width: 5 } },
    { selector: 'edge.l7-denied', style: { 'line-color': COLORS.l7Denied, 'target-arrow-color': COLORS.l7Denied, 'line-style': 'dotted', 'target-arrow-shape': 'tee', width: 4 } },
    // Across cluster nodes (over the overlay): a wider line with a halo, arrow at both the source and the target side.
    { selector: 'edge.cross-node', style: { width: 5, 'underlay-color': '#4a6fa5', 'underlay-opacity': 0.25, 'underlay-padding': 4, 'source-arrow-shape': 'circle', 'source-arrow-color': '#4a6fa5' } },
    { selector: 'edge:selected', style: { width: 5 } },
  ],
});

let layoutPending = false;
let userMoved = false;
let fitting = false;
cy.on('dragpan scrollzoom pinchzoom', () => {
  if (!fitting) userMoved = true;
});

function fit(): void {
  fitting = true;
  cy.fit(undefined, 40);
  if (cy.zoom() > 1.4) {
    cy.zoom(1.4);
    cy.center();
  }
  fitting = false;
}

let laidOut = false;

/** Force layouts come out round; the panel is wide. Spread the map sideways (up to 2x) so it fits larger. */
function stretchToPanel(): void {
  const nodes = cy.nodes(':childless');
  if (nodes.length < 3) return;
  const bb = nodes.boundingBox({});
  if (!bb.w || !bb.h || !cy.width() || !cy.height()) return;
  const factor = Math.min(2, cy.width() / cy.height() / (bb.w / bb.h));
  if (factor < 1.15) return;
  const cx = bb.x1 + bb.w / 2;
  nodes.positions((n) => ({ x: cx + (n.position('x') - cx) * factor, y: n.position('y') }));
}

/**
 * Lay the map out with fcose (force-directed, aware of the namespace boxes). The
 * first layout starts from scratch; later ones start from the current positions,
 * new nodes placed beside a neighbour, so the map refines rather than reshuffles.
 */
function runLayout(): void {
  layoutPending = false;
  const fresh = !laidOut;
  const big = cy.nodes(':childless').length > 8;
  if (!fresh) {
    for (const n of cy.nodes(':childless').filter((n) => n.data('placed') !== true)) {
      const placed = (c: cytoscape.NodeCollection) => c.filter((m) => m.data('placed') === true);
      const anchor = placed(n.neighborhood().nodes()).first();
      const sibling = n.parent().nonempty() ? placed(n.siblings()).first() : cy.collection();
      const base = anchor.nonempty() ? (anchor as cytoscape.NodeSingular).position() : sibling.nonempty() ? (sibling as cytoscape.NodeSingular).position() : { x: cy.width() / 2, y: cy.height() / 2 };
      n.position({ x: base.x + 60 + Math.random() * 40, y: base.y + 60 + Math.random() * 40 });
    }
  }
  cy.layout({
    name: 'fcose',
    quality: 'proof',
    randomize: fresh,
    samplingType: false,
    animate: false,
    fit: false,
    padding: 40,
    nodeDimensionsIncludeLabels: true,
    uniformNodeDimensions: false,
    packComponents: true,
    // Short edges once the map is busy, so it stays readable when fitted.
    idealEdgeLength: () => (big ? 95 : 170),
    edgeElasticity: () => 0.45,
    nodeRepulsion: () => (big ? 6000 : 9000),
    nodeSeparation: big ? 80 : 110,
    nestingFactor: 0.1,
    gravity: 0.25,
    gravityRangeCompound: 1.5,
    gravityCompound: 1.0,
    numIter: 2500,
    tile: true,
    tilingPaddingVertical: 30,
    tilingPaddingHorizontal: 30,
  } as cytoscape.LayoutOptions).run();
  stretchToPanel();
  cy.nodes().data('placed', true);
  laidOut = true;
  if (!userMoved) fit();
}

function edgeLabel(ports: string[], l7Kinds: string[] = [], l7Denied = 0): string {
  const p = ports.length > 3 ? `${ports.slice(0, 3).join(', ')} +${ports.length - 3}` : ports.join(', ');
  if (!l7Kinds.length) return p;
  return `${p} ${l7Kinds.join('/')}${l7Denied ? ` (${l7Denied} denied)` : ''}`;
}

/** An edge's classes: its L4 verdict, and whether it carries L7 requests (some denied). */
function edgeClasses(e: Graph['edges'][number]): string {
  return [e.verdict, e.l7 ? 'l7' : '', e.l7Denied ? 'l7-denied' : '', e.crossNode ? 'cross-node' : ''].filter(Boolean).join(' ');
}

let lastGraph: Graph = { nodes: [], edges: [] };

function renderGraph(visible: ViewFlow[]): void {
  // Local workloads are always on the map (within the namespace and pod filters), with or without flows.
  const extra: { peer: Peer; pod?: string }[] = [];
  for (const e of endpoints) {
    if (!e.podName) continue;
    const ns = e.namespace || 'default';
    if (filters.namespace && ns !== filters.namespace) continue;
    if (filters.pod && !(filters.pod.includes('/') ? `${ns}/${e.podName}`.startsWith(filters.pod) : e.podName.startsWith(filters.pod))) continue;
    extra.push({ peer: peerOf({ identity: e.identity, namespace: ns, pod_name: e.podName, labels: e.labels }, e.ipv4, podLabels, identityLabels), pod: e.podName });
  }
  const g = buildGraph(visible, extra, connectionOutcomes(ordered));
  lastGraph = g;
  const namespaces = new Set(g.nodes.filter((n) => n.namespace).map((n) => n.namespace!));
  const want = new Set<string>();
  let added = false;
  cy.batch(() => {
    for (const ns of namespaces) {
      const id = `ns:${ns}`;
      want.add(id);
      if (cy.getElementById(id).empty()) {
        cy.add({ group: 'nodes', data: { id, label: `namespace ${ns}` }, classes: 'namespace' });
        added = true;
      }
    }
    // Cluster mode: when the map spans several cluster nodes, each workload says where it runs.
    const spansNodes = new Set(g.nodes.flatMap((n) => n.clusterNodes)).size > 1;
    for (const n of g.nodes) {
      want.add(n.id);
      const base = n.pods.length > 1 ? `${n.label}\n${n.pods.length} pods` : n.label;
      // Cluster mode: the nodes the workload runs on.
      const label = spansNodes && n.clusterNodes.length ? `${base}\non ${n.clusterNodes.join(', ')}` : base;
      const classes = `kind-${n.kind}${n.flows ? '' : ' idle'}`;
      const el = cy.getElementById(n.id);
      const parent = n.namespace ? `ns:${n.namespace}` : undefined;
      if (el.empty()) {
        cy.add({ group: 'nodes', data: { id: n.id, label, kind: n.kind, namespace: n.namespace, parent }, classes });
        added = true;
      } else {
        el.data('label', label);
        el.classes(classes);
      }
    }
    for (const e of g.edges) {
      want.add(`e:${e.id}`);
      const el = cy.getElementById(`e:${e.id}`);
      const data = { label: edgeLabel(e.ports, e.l7Kinds, e.l7Denied), verdict: e.verdict, forwarded: e.forwarded, dropped: e.dropped, flows: e.flows, ports: e.ports, key: e.id, l7: e.l7, l7Denied: e.l7Denied };
      if (el.empty()) {
        cy.add({ group: 'edges', data: { id: `e:${e.id}`, source: e.source, target: e.target, ...data }, classes: edgeClasses(e) });
        added = true;
      } else {
        el.data(data);
        el.classes(edgeClasses(e));
      }
    }
    const gone = cy.elements().filter((el) => !want.has(el.id()));
    if (gone.nonempty()) cy.remove(gone);
  });
  $('map-empty').hidden = g.nodes.length > 0;
  if (added) {
    if (!layoutPending) {
      layoutPending = true;
      requestAnimationFrame(runLayout);
    }
  }
}

cy.on('tap', 'node', (ev) => {
  const n = ev.target;
  if (n.isParent()) {
    setFilter({ namespace: String(n.id()).slice(3), node: '', edge: '' });
    return;
  }
  setFilter({ node: n.id(), edge: '' });
});
cy.on('tap', 'edge', (ev) => setFilter({ edge: ev.target.data('key'), node: '' }));
cy.on('tap', (ev) => {
  if (ev.target === cy && (filters.node || filters.edge)) setFilter({ node: '', edge: '' });
});

// ---- the table ----------------------------------------------------------------

function cell(tr: HTMLTableRowElement, text: string, cls?: string, title?: string): HTMLTableCellElement {
  const td = tr.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

function peerCell(tr: HTMLTableRowElement, p: Peer, ep: Flow['source'], ip?: string): void {
  const td = tr.insertCell();
  td.className = 'peer';
  const main = document.createElement('span');
  main.className = `peer-name kind-${p.kind}`;
  main.textContent = ep.pod_name ? `${ep.namespace || 'default'}/${ep.pod_name}` : p.label;
  td.appendChild(main);
  const detail = [ip, ep.pod_name && p.label !== ep.pod_name ? p.id : ''].filter(Boolean).join(' · ');
  if (detail) {
    const small = document.createElement('span');
    small.className = 'muted';
    small.textContent = detail;
    td.appendChild(small);
  }
  td.title = (ep.labels ?? []).join('\n') || `identity ${ep.identity}`;
}

function timeText(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Where the datapath saw the packet: the trace point, else the kind of event (drop, policy verdict). */
function observedAt(f: Flow): string {
  if (f.trace_observation_point) return f.trace_observation_point;
  const t = Number(f.event_type?.type);
  if (t === 1) return 'drop';
  if (t === 5) return `policy verdict${f.policy_match_type ? ` (${f.policy_match_type})` : ''}`;
  if (t === 4) return 'trace';
  if (f.l7) return `proxy (${f.l7.http ? 'http' : 'dns'} ${String(f.l7.type).toLowerCase()})`;
  return '';
}

function renderTable(visible: ViewFlow[]): void {
  const tbody = ($('flows') as HTMLTableElement).tBodies[0];
  const rows = visible.slice(-MAX_ROWS).reverse();
  const fresh = document.createElement('tbody');
  for (const v of rows) {
    const f = v.flow;
    const tr = fresh.insertRow();
    tr.className = `verdict-${f.verdict.toLowerCase()}`;
    tr.dataset.verdict = f.verdict;
    tr.dataset.source = v.src.id;
    tr.dataset.destination = v.dst.id;
    cell(tr, timeText(f.time), 'time', f.time);
    peerCell(tr, v.src, f.source, f.IP?.source);
    peerCell(tr, v.dst, f.destination, f.IP?.destination);
    const pp = portsOf(f);
    cell(tr, portProto(f), 'mono', pp.src !== undefined ? `source port ${pp.src} → destination port ${pp.dst}` : undefined);
    const vd = tr.insertCell();
    const badge = document.createElement('span');
    badge.className = `badge badge-${f.verdict.toLowerCase()}`;
    badge.textContent = f.verdict;
    vd.appendChild(badge);
    if (f.is_reply) {
      const r = document.createElement('span');
      r.className = 'muted reply';
      r.textContent = 'reply';
      vd.appendChild(r);
    }
    cell(tr, dropReason(f), 'reason');
    cell(tr, tcpFlags(f), 'mono');
    cell(tr, (f.traffic_direction ?? '').replace('TRAFFIC_DIRECTION_UNKNOWN', 'unknown').toLowerCase());
    cell(tr, observedAt(f), 'muted', f.Summary);
    cell(tr, l7Text(f), `mono l7${f.l7 && f.verdict === 'DROPPED' ? ' l7-denied' : ''}`, f.l7 ? f.Summary : undefined);
  }
  tbody.replaceWith(fresh);
  const total = flows.size;
  $('count').textContent = `${visible.length} matching of ${total} flow${total === 1 ? '' : 's'}${visible.length > MAX_ROWS ? ` (newest ${MAX_ROWS} shown)` : ''}`;
}

// ---- filters --------------------------------------------------------------------

const form = $('filters') as HTMLFormElement;
const inputs: Record<'namespace' | 'pod' | 'verdict' | 'protocol' | 'port' | 'text', HTMLInputElement | HTMLSelectElement> = {
  namespace: $('f-namespace'),
  pod: $('f-pod'),
  verdict: $('f-verdict'),
  protocol: $('f-protocol'),
  port: $('f-port'),
  text: $('f-text'),
};

function syncInputs(): void {
  ensureNamespaceOption(filters.namespace);
  for (const [k, el] of Object.entries(inputs)) if (el.value !== filters[k as keyof Filters]) el.value = filters[k as keyof Filters];
  const sel = filters.node || filters.edge;
  $('selection').hidden = !sel;
  $('selection-text').textContent = filters.node ? `node ${filters.node}` : filters.edge ? `edge ${filters.edge.replace('->', ' → ')}` : '';
}

function ensureNamespaceOption(ns: string): void {
  const sel = inputs.namespace as HTMLSelectElement;
  if (!ns || [...sel.options].some((o) => o.value === ns)) return;
  const opt = document.createElement('option');
  opt.value = ns;
  opt.textContent = ns;
  sel.appendChild(opt);
}

function updateNamespaceOptions(): void {
  const seen = new Set<string>();
  for (const e of endpoints) if (e.podName) seen.add(e.namespace || 'default');
  for (const v of ordered) {
    if (v.src.namespace) seen.add(v.src.namespace);
    if (v.dst.namespace) seen.add(v.dst.namespace);
  }
  for (const ns of [...seen].sort()) ensureNamespaceOption(ns);
}

function setFilter(patch: Partial<Filters>): void {
  filters = { ...filters, ...patch };
  if (filters.port && !/^\d+$/.test(filters.port)) filters.port = filters.port.replace(/\D/g, '');
  writeFiltersToUrl();
  syncInputs();
  dirty = true;
  render();
  if (agentQuery(filters).toString() !== streamQuery) connect();
}

let typing: number | undefined;
form.addEventListener('submit', (e) => e.preventDefault());
for (const [k, el] of Object.entries(inputs)) {
  const apply = () => setFilter({ [k]: el.value.trim() } as Partial<Filters>);
  el.addEventListener('change', apply);
  if (el instanceof HTMLInputElement)
    el.addEventListener('input', () => {
      clearTimeout(typing);
      typing = window.setTimeout(apply, 250);
    });
}
$('clear').addEventListener('click', () => setFilter({ ...EMPTY_FILTERS }));
$('selection-clear').addEventListener('click', () => setFilter({ node: '', edge: '' }));
$('fit').addEventListener('click', () => {
  userMoved = false;
  fit();
});
window.addEventListener('resize', () => {
  cy.resize();
  if (!userMoved) fit();
});

// ---- rendering loop -------------------------------------------------------------

function render(): void {
  if (!dirty || ($('pause') as HTMLInputElement).checked) return;
  dirty = false;
  sortFlows();
  const visible = ordered.filter((v) => matches(v, filters));
  updateNamespaceOptions();
  renderGraph(visible);
  renderTable(visible);
}

$('pause').addEventListener('change', () => {
  dirty = true;
  render();
});

/** For tests and debugging: the map as drawn. */
(window as unknown as Record<string, unknown>).__membraneGraph = () => ({
  namespaces: cy.nodes(':parent').map((n) => n.id().slice(3)),
  nodes: cy.nodes(':childless').map((n) => ({ id: n.id(), label: n.data('label'), kind: n.data('kind'), namespace: n.data('namespace'), classes: n.classes() })),
  edges: cy.edges().map((e) => ({
    id: e.data('key'),
    source: e.source().id(),
    target: e.target().id(),
    verdict: e.data('verdict'),
    classes: e.classes(),
    color: e.style('line-color'),
    forwarded: e.data('forwarded'),
    dropped: e.data('dropped'),
    flows: e.data('flows'),
    ports: e.data('ports'),
  })),
  flows: flows.size,
  connection: connection.state,
  model: lastGraph,
});

syncInputs();
connect();
loadStatus();
refreshEndpoints();
setInterval(refreshEndpoints, REFRESH_ENDPOINTS_MS);
setInterval(render, RENDER_EVERY_MS);
