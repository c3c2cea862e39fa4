// The overview: live charts of the last 15 minutes, what is running, with which flags.
import { getJSON } from '../api.js';
import { TimeChart } from '../charts.js';
import { fill, formatBytes, formatTime, h } from '../dom.js';

const CHARTS = [
  ['requests', 'Requests per second', [
    { key: 'hits', label: 'hits', colour: '#2e7d32' },
    { key: 'misses', label: 'misses', colour: '#ef6c00' },
    { key: 'uploads', label: 'uploads', colour: '#1565c0' },
    { key: 'errors', label: 'errors', colour: '#c62828' },
  ]],
  ['latency', 'Miss latency (ms, last minute)', [
    { key: 'p50_ms', label: 'p50', colour: '#6a1b9a' },
    { key: 'p99_ms', label: 'p99', colour: '#ad1457' },
  ]],
  ['workers', 'Queue and workers', [
    { key: 'queue', label: 'queued jobs', colour: '#ef6c00' },
    { key: 'busy', label: 'busy workers', colour: '#1565c0' },
    { key: 'workers', label: 'workers', colour: '#9e9e9e', dash: [4, 4] },
  ]],
  ['uploads', 'Pending S3 uploads', [
    { key: 'pending_uploads', label: 'pending', colour: '#00838f' },
  ], 'No bucket: nothing to upload.'],
  ['webhooks', 'Webhook failures per minute', [
    { key: 'webhook_failures', label: 'failed or dropped', colour: '#c62828' },
  ]],
];

function facts(rows) {
  return h('dl', { class: 'facts' }, rows.map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]));
}

function table(head, rows, attributes = {}) {
  return h('table', attributes,
    h('thead', {}, h('tr', {}, head.map((cell) => h('th', {}, cell)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, row.map((cell) => h('td', {}, cell))))));
}

function running(overview) {
  const build = overview.git_hash.includes('not defined') ? 'a checkout' : `${overview.git_hash}, ${overview.build_timestamp}`;
  return facts([
    ['version', `${overview.version} (${build}), Python ${overview.python}`],
    ['started', formatTime(overview.started)],
    ['state', `${overview.ready.message}${overview.ready.bucket ? `; bucket ${overview.ready.bucket}` : ''}`],
    ['main site', overview.main_url],
    ['store', overview.store],
  ]);
}

function processes(overview) {
  const { workers, main } = overview;
  const rows = [['main', main.pid, formatBytes(main.resident_bytes), seconds(main.cpu_seconds)]];
  workers.processes.forEach((worker, index) => {
    rows.push([`worker ${index + 1}`, worker.pid, formatBytes(worker.resident_bytes), seconds(worker.cpu_seconds)]);
  });
  return [
    h('p', {}, `${workers.size} workers, ${workers.busy} busy, ${workers.queued} jobs waiting`),
    table(['process', 'pid', 'memory', 'CPU'], rows, { 'data-table': 'processes' }),
  ];
}

function seconds(value) {
  return value === null ? '—' : `${value.toFixed(1)} s`;
}

function flags(overview) {
  const rows = overview.flags.map((flag) => [h('code', {}, flag.flag), flag.value, flag.changed ? 'set' : '']);
  return table(['flag', 'value', ''], rows, { class: 'flags', 'data-table': 'flags' });
}

export async function overviewPage(main) {
  const chartsPlace = h('section', { class: 'charts' });
  const runningPlace = h('div');
  const processesPlace = h('div');
  const flagsPlace = h('div');
  const problem = h('p', { class: 'error', hidden: true });
  fill(main,
    h('h1', {}, 'Overview'),
    problem,
    chartsPlace,
    h('section', { class: 'columns' },
      h('div', {}, h('h2', {}, 'Running'), runningPlace, h('h2', {}, 'Processes'), processesPlace),
      h('div', {}, h('h2', {}, 'Flags in effect'), flagsPlace)));
  main.dataset.page = 'overview';
  const charts = CHARTS.map(([id, title, series, empty]) => new TimeChart(chartsPlace, id, title, series, empty));

  async function refresh() {
    try {
      const [overview, history] = await Promise.all([getJSON('/api/overview'), getJSON('/api/history')]);
      problem.hidden = true;
      charts.forEach((chart) => chart.update(history));
      fill(runningPlace, running(overview));
      fill(processesPlace, processes(overview));
      fill(flagsPlace, flags(overview));
      return history.interval;
    } catch (error) {
      fill(problem, `Cannot reach the server: ${error.message}`);
      problem.hidden = false;
      return null;
    }
  }

  const interval = (await refresh()) || 2;
  const timer = setInterval(refresh, interval * 1000);
  return () => {
    clearInterval(timer);
    charts.forEach((chart) => chart.destroy());
  };
}
