// The namespaces of the local store, with their image counts.
import { getJSON } from '../api.js';
import { fill, h } from '../dom.js';
import { uploadPanel } from '../upload.js';

function count(namespace) {
  if (namespace.images === null) return 'not counted';
  return namespace.complete ? String(namespace.images) : `${namespace.images}+`;
}

export async function namespacesPage(main, state) {
  const found = await getJSON('/api/namespaces');
  const rows = found.namespaces.map((namespace) => h('tr', {},
    h('td', {}, h('a', { href: `#/n/${namespace.name}` }, namespace.name)),
    h('td', { class: 'number' }, count(namespace))));
  fill(main,
    h('h1', {}, 'Namespaces'),
    rows.length
      ? h('table', { 'data-table': 'namespaces' }, h('thead', {}, h('tr', {}, h('th', {}, 'namespace'), h('th', {}, 'images'))), h('tbody', {}, rows))
      : h('p', { class: 'muted' }, 'The local store holds no image yet.'),
    state.session.authenticated ? uploadPanel(state, null) : null);
  main.dataset.page = 'namespaces';
}
