// One image: its info.json, the original, every stored file, and the URL builder.
import { getJSON } from '../api.js';
import { builder } from '../builder.js';
import { filePath, fill, formatBytes, formatTime, h } from '../dom.js';

// Types a browser shows: anything else (HEIC) is shown as its thumbnail.
const SHOWN = ['image/jpeg', 'image/png', 'image/gif', 'image/webp', 'image/avif'];

function fileRow(namespace, hash, file) {
  const href = `/files${filePath(namespace, hash, file.name)}`;
  const size = h('td', { class: 'number' }, '—');
  let picture = null;
  if (file.kind === 'variant') {
    picture = h('img', { src: href, loading: 'lazy', alt: '', class: 'tiny' });
    picture.addEventListener('load', () => fill(size, `${picture.naturalWidth}×${picture.naturalHeight}`));
  }
  const link = h('a', { href, download: file.kind === 'attachment' ? file.name : null }, file.name);
  return h('tr', { 'data-kind': file.kind },
    h('td', {}, picture), h('td', {}, link), h('td', {}, file.kind), size,
    h('td', { class: 'number' }, formatBytes(file.bytes)), h('td', {}, formatTime(file.modified)));
}

export async function imagePage(main, state, namespace, hash) {
  const image = await getJSON(`/api/images/${namespace}/${hash}`);
  const filesPlace = h('tbody');
  const showFiles = (files) => fill(filesPlace, files.map((file) => fileRow(namespace, hash, file)));
  showFiles(image.files);
  const refreshFiles = async () => showFiles((await getJSON(`/api/images/${namespace}/${hash}`)).files);

  const { original, info } = image;
  const shown = original && SHOWN.includes(original.content_type)
    ? `/files${filePath(namespace, hash, 'original')}`
    : `/site${filePath(namespace, hash, state.site.thumbnail)}`;
  fill(main,
    h('h1', {},
      h('a', { href: '#/namespaces' }, 'Namespaces'), ' / ',
      h('a', { href: `#/n/${namespace}` }, namespace), ' / ',
      h('code', { class: 'hash' }, hash)),
    h('section', { class: 'columns' },
      h('figure', { class: 'original' }, h('img', { src: shown, alt: 'the original' })),
      h('div', {},
        h('h2', {}, 'Original'),
        original
          ? h('p', { 'data-out': 'original' }, `${original.content_type}, ${formatBytes(original.bytes)}`, info ? `, ${info.width}×${info.height}` : '')
          : h('p', { class: 'muted' }, 'Not in the local store.'),
        h('h2', {}, 'info.json'),
        h('pre', { 'data-out': 'info' }, image.info_json === null ? 'none' : image.info_json))),
    h('h2', {}, 'Stored files'),
    h('table', { class: 'files', 'data-table': 'files' },
      h('thead', {}, h('tr', {}, ['', 'name', 'kind', 'size', 'bytes', 'stored'].map((cell) => h('th', {}, cell)))),
      filesPlace),
    builder(state, namespace, hash, refreshFiles));
  main.dataset.page = 'image';
}
