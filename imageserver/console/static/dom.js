// Every element the console shows is built here, and every text goes in as a text node, never as
// markup: namespaces, file names and info.json come from users, and must stay inert.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  add(element, children);
  return element;
}

// Replace what `target` holds.
export function fill(target, ...children) {
  target.replaceChildren();
  add(target, children);
  return target;
}

function add(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '—';
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = -1;
  do {
    value /= 1024;
    unit += 1;
  } while (value >= 1024 && unit < units.length - 1);
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString();
}

// `6e0072682e66287b662827da75b244a3` → `6e0/072/682/e66287b662827da75b244a3`, as the store lays it.
export function partition(hash) {
  return `${hash.slice(0, 3)}/${hash.slice(3, 6)}/${hash.slice(6, 9)}/${hash.slice(9)}`;
}

// The URL path of one of an image's files, on the main site (and under /files and /site here).
export function filePath(namespace, hash, name) {
  return `/${namespace}/${partition(hash)}/${encodeURIComponent(name)}`;
}
