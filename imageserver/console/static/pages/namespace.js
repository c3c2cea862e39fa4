// A namespace's images, newest first, a page at a time, each as the one thumbnail variant.
import { getJSON } from '../api.js';
import { filePath, fill, formatTime, h } from '../dom.js';
import { uploadPanel } from '../upload.js';

export async function namespacePage(main, state, namespace, pageText) {
  const page = Number(pageText || 1);
  const listing = await getJSON(`/api/namespaces/${namespace}/images?page=${page}`);
  const pages = Math.max(1, Math.ceil(listing.total / listing.per_page));
  const cards = listing.images.map((image) => {
    const size = image.info ? `${image.info.width}×${image.info.height}` : 'no info.json';
    return h('a', { class: 'card', href: `#/i/${namespace}/${image.hash}` },
      h('img', { src: `/site${filePath(namespace, image.hash, state.site.thumbnail)}`, width: 160, height: 160, loading: 'lazy', alt: '' }),
      h('code', { class: 'hash' }, image.hash.slice(0, 12)),
      h('span', { class: 'muted' }, size),
      h('span', { class: 'muted' }, formatTime(image.modified)));
  });
  const link = (number, text) => (number >= 1 && number <= pages && number !== page
    ? h('a', { href: `#/n/${namespace}/page/${number}` }, text)
    : h('span', { class: 'muted' }, text));
  const total = listing.complete ? `${listing.total} images` : `the newest of the first ${listing.total} images found`;
  fill(main,
    h('h1', {}, h('a', { href: '#/namespaces' }, 'Namespaces'), ' / ', namespace),
    h('p', {}, total),
    cards.length ? h('div', { class: 'grid', 'data-grid': 'images' }, cards) : h('p', { class: 'muted' }, 'No image here.'),
    h('nav', { class: 'pager' }, link(page - 1, '← newer'), ` page ${page} of ${pages} `, link(page + 1, 'older →')),
    state.session.authenticated ? uploadPanel(state, namespace) : null);
  main.dataset.page = 'namespace';
}
