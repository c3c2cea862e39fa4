// Upload by drag and drop or file picker, into a namespace, through the admin site (which needs
// the admin token).  Each upload shows its hash and the image, as its thumbnail.
import { upload } from './api.js';
import { filePath, fill, h } from './dom.js';

const NAMESPACE = /^[a-z0-9_-]+$/;

// `namespace`: a fixed namespace, or null for a field to type one in.
export function uploadPanel(state, namespace) {
  const field = namespace ? null : h('input', {
    name: 'namespace', required: true, pattern: '[a-z0-9_\\-]+', placeholder: 'namespace', 'aria-label': 'namespace',
  });
  const picker = h('input', { type: 'file', accept: 'image/*', multiple: true, 'aria-label': 'images to upload' });
  const results = h('ul', { class: 'uploads' });
  const zone = h('div', { class: 'drop', tabindex: '0' },
    h('p', {}, 'Drop images here, or '),
    h('label', { class: 'button' }, 'choose files', picker));

  async function send(files) {
    const target = namespace || field.value.trim();
    if (!NAMESPACE.test(target)) {
      results.prepend(h('li', { class: 'error' }, 'A namespace is lower-case letters, digits, - and _.'));
      return;
    }
    for (const file of files) {
      const item = h('li', {}, h('span', {}, file.name), ' — uploading…');
      results.prepend(item);
      try {
        const details = await upload(target, file);
        const thumbnail = `/site${filePath(target, details.hash, state.site.thumbnail)}`;
        fill(item,
          h('img', { src: thumbnail, width: 80, height: 80, alt: '' }),
          h('span', {}, file.name, ' → ', h('a', { href: `#/i/${target}/${details.hash}` }, h('code', { class: 'hash' }, details.hash)),
            ` ${details.width}×${details.height} ${details.content_type}`));
      } catch (error) {
        fill(item, h('span', {}, file.name), ': ', h('span', { class: 'error' }, error.message));
      }
    }
  }

  picker.addEventListener('change', () => {
    send([...picker.files]);
    picker.value = '';
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    send([...event.dataTransfer.files]);
  });
  return h('section', { class: 'upload' },
    h('h2', {}, namespace ? `Upload to ${namespace}` : 'Upload'),
    field ? h('p', {}, h('label', {}, 'Into the namespace ', field)) : null,
    zone, results);
}
