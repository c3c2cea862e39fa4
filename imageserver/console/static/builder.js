// The URL builder: a form over the whole variant grammar (docs/names.md), the canonical name it
// spells, and a live preview made by the main site through the admin site's relay.
import { postJSON } from './api.js';
import { filePath, fill, formatBytes, h } from './dom.js';

// What a browser's <img> asks for, so that `.auto` picks what a page would get.
const IMAGE_ACCEPT = 'image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8';
const GRAVITIES = ['n', 's', 'e', 'w', 'ne', 'nw', 'se', 'sw', 'smart'];
const FORMATS = ['jpg', 'png', 'webp', 'gif', 'avif', 'heic', 'auto'];

function number(text) {
  const value = parseInt(text, 10);
  return Number.isFinite(value) ? value : 0;
}

// The canonical name of a choice of options: modifiers in the grammar's one order, numbers without
// leading zeros, colours in lower case.  Options a base cannot take are left out.
export function variantName(choice) {
  const width = number(choice.width);
  const height = number(choice.height);
  const base = {
    w: `w${width}`, h: `h${height}`, x: `x${width}`, box: `${width}x${height}`, full: 'full_size',
  }[choice.base];
  const parts = [base];
  const box = choice.base === 'box';
  if (box && choice.mode !== 'crop') parts.push(choice.mode);
  const crops = choice.base === 'x' || (box && choice.mode === 'crop');
  if (crops && GRAVITIES.includes(choice.position)) parts.push(`g${choice.position}`);
  if (crops && choice.position === 'focus') parts.push(`fp${number(choice.focusX)}x${number(choice.focusY)}`);
  if (choice.base !== 'full' && number(choice.dpr) > 1) parts.push(`dpr${number(choice.dpr)}`);
  if (choice.background) parts.push(`bg${choice.background.replace('#', '').toLowerCase()}`);
  if (number(choice.blur) > 0) parts.push(`blur${number(choice.blur)}`);
  if (number(choice.quality) > 0) parts.push(`q${number(choice.quality)}`);
  return `${parts.join('-')}.${choice.format}`;
}

function select(name, options, label) {
  return h('select', { name, 'aria-label': label },
    options.map(([value, text]) => h('option', { value }, text)));
}

function numberField(name, label, attributes) {
  return h('input', { type: 'number', name, 'aria-label': label, ...attributes });
}

// The main site's base URL as this browser reaches it.
function mainBase(site) {
  if (!site.listens_everywhere) return site.main_url;
  return `${location.protocol}//${location.hostname}:${site.main_port}`;
}

export function builder(state, namespace, hash, onMade) {
  const { limits } = state.site;
  const fields = {
    base: select('base', [['w', 'width'], ['h', 'height'], ['x', 'square'], ['box', 'width × height'], ['full', 'full size']], 'size'),
    width: numberField('width', 'width', { min: 1, max: limits.maximum_width || undefined, value: 200 }),
    height: numberField('height', 'height', { min: 1, max: limits.maximum_width || undefined, value: 200 }),
    mode: select('mode', [['crop', 'crop'], ['fit', 'fit inside'], ['pad', 'fit and pad']], 'mode'),
    position: select('position', [['', 'centre'], ...GRAVITIES.map((g) => [g, g === 'smart' ? 'smart (most salient)' : `gravity ${g}`]), ['focus', 'focal point']], 'position'),
    focusX: numberField('focusX', 'focal point x (%)', { min: 0, max: 100, value: 50 }),
    focusY: numberField('focusY', 'focal point y (%)', { min: 0, max: 100, value: 50 }),
    dpr: select('dpr', [['1', '1×'], ['2', '2×'], ['3', '3×']], 'device pixel ratio'),
    blur: numberField('blur', 'blur (1-100)', { min: 0, max: 100, value: 0 }),
    background: h('input', { type: 'color', name: 'background', value: '#ffffff', 'aria-label': 'background' }),
    useBackground: h('input', { type: 'checkbox', name: 'useBackground', 'aria-label': 'set a background' }),
    format: select('format', FORMATS.map((f) => [f, f === 'auto' ? '.auto (by Accept)' : f]), 'format'),
    quality: numberField('quality', 'quality', { min: 1, max: 100, placeholder: String(limits.default_quality) }),
  };
  const row = (label, ...inputs) => h('label', { class: 'field' }, h('span', {}, label), ...inputs);
  const rows = {
    size: row('size', fields.base, fields.width, fields.height),
    mode: row('box', fields.mode),
    position: row('crop around', fields.position, fields.focusX, fields.focusY),
    dpr: row('density', fields.dpr),
    blur: row('blur', fields.blur),
    background: row('background', fields.useBackground, fields.background),
    format: row('format', fields.format, fields.quality),
  };
  const name = h('code', { 'data-out': 'name' });
  const url = h('code', { 'data-out': 'url' });
  const signed = h('code', { 'data-out': 'signed' });
  const image = h('img', { alt: 'preview', 'data-out': 'preview' });
  const about = h('p', { 'data-out': 'about', class: 'muted' }, 'Change any field, or press Preview, to make this variant.');
  let controller = null;
  let timer = null;

  function choice() {
    return {
      base: fields.base.value,
      width: fields.width.value,
      height: fields.height.value,
      mode: fields.mode.value,
      position: fields.position.value,
      focusX: fields.focusX.value,
      focusY: fields.focusY.value,
      dpr: fields.dpr.value,
      blur: fields.blur.value,
      background: fields.useBackground.checked ? fields.background.value : '',
      format: fields.format.value,
      quality: fields.quality.value,
    };
  }

  function path() {
    return filePath(namespace, hash, variantName(choice()));
  }

  // Show only what the chosen base can take.
  function arrange() {
    const base = fields.base.value;
    const crops = base === 'x' || (base === 'box' && fields.mode.value === 'crop');
    fields.width.hidden = !['w', 'x', 'box'].includes(base);
    fields.height.hidden = !['h', 'box'].includes(base);
    rows.mode.hidden = base !== 'box';
    rows.position.hidden = !crops;
    fields.focusX.hidden = fields.position.value !== 'focus';
    fields.focusY.hidden = fields.position.value !== 'focus';
    rows.dpr.hidden = base === 'full';
    fill(name, variantName(choice()));
    fill(url, mainBase(state.site) + path());
    fill(signed, '');
  }

  async function preview() {
    if (controller) controller.abort();
    controller = new AbortController();
    const made = controller;
    fill(about, 'Making…');
    const started = performance.now();
    try {
      const response = await fetch(`/site${path()}`, { headers: { Accept: IMAGE_ACCEPT }, signal: made.signal });
      const blob = await response.blob();
      const seconds = (performance.now() - started) / 1000;
      if (!response.ok) {
        const text = await blob.text();
        let message = text;
        try {
          message = JSON.parse(text).error || JSON.parse(text).message || text;
        } catch (error) {
          // not JSON: the text as it came
        }
        image.removeAttribute('src');
        fill(about, h('span', { class: 'error' }, `${response.status}: ${message}`));
        return;
      }
      const timing = /dur=([0-9.]+)/.exec(response.headers.get('Server-Timing') || '');
      const served = response.headers.get('Content-Location');
      image.onload = () => {
        if (made !== controller) return;
        fill(about,
          h('strong', { 'data-out': 'size' }, `${image.naturalWidth}×${image.naturalHeight}`), ' · ',
          h('span', { 'data-out': 'bytes' }, formatBytes(blob.size)), ' · ',
          blob.type || response.headers.get('Content-Type'),
          served ? ` (stored as ${served})` : '', ' · ',
          timing ? `the main site answered in ${Number(timing[1]).toFixed(0)} ms, ` : '',
          `here in ${(seconds * 1000).toFixed(0)} ms`);
        onMade();
      };
      image.onerror = () => fill(about, `${formatBytes(blob.size)} of ${blob.type}, which this browser cannot show`);
      if (image.src) URL.revokeObjectURL(image.src);
      image.src = URL.createObjectURL(blob);
    } catch (error) {
      if (error.name !== 'AbortError') fill(about, h('span', { class: 'error' }, error.message));
    }
  }

  function changed() {
    arrange();
    clearTimeout(timer);
    timer = setTimeout(preview, 400);
  }

  const form = h('form', { class: 'builder', 'data-form': 'builder' }, Object.values(rows));
  form.addEventListener('input', changed);
  form.addEventListener('change', changed);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(timer);
    preview();
  });
  form.append(h('button', { type: 'submit' }, 'Preview'));

  let signing = null;
  if (state.session.can_sign) {
    const ttl = select('ttl', [['60', '1 minute'], ['900', '15 minutes'], ['3600', '1 hour']], 'lifetime');
    const sign = async () => {
      try {
        const answer = await postJSON('/api/sign', { method: 'GET', path: decodeURIComponent(path()), ttl: Number(ttl.value) });
        fill(signed, mainBase(state.site) + answer.signed);
      } catch (error) {
        fill(signed, error.message);
      }
    };
    signing = h('p', {}, 'Signed GET URL, valid for ', ttl, ' ', h('button', { type: 'button', onclick: sign }, 'Sign'), h('br'), signed);
  }

  arrange();
  return h('section', { class: 'builder-panel' },
    h('h2', {}, 'URL builder'),
    h('div', { class: 'columns' },
      h('div', {}, form),
      h('div', {},
        h('p', {}, 'Name ', name),
        h('p', {}, 'URL ', url),
        signing,
        h('figure', { class: 'preview' }, image, h('figcaption', {}, about)))));
}
