// The console: one page, routed by the URL's fragment, rendered from the admin site's JSON.
import { getJSON, postJSON } from './api.js';
import { fill, h } from './dom.js';
import { imagePage } from './pages/image.js';
import { loginPage } from './pages/login.js';
import { namespacePage } from './pages/namespace.js';
import { namespacesPage } from './pages/namespaces.js';
import { overviewPage } from './pages/overview.js';

// What every page may need: the site (main URL, thumbnail, limits) and who is asking.
const state = { site: null, session: null, refresh: refreshSession };

const routes = [
  [/^#?\/?$/, overviewPage],
  [/^#\/namespaces$/, namespacesPage],
  [/^#\/n\/([a-z0-9_-]+)(?:\/page\/([0-9]+))?$/, namespacePage],
  [/^#\/i\/([a-z0-9_-]+)\/([a-f0-9]{32})$/, imagePage],
  [/^#\/login$/, loginPage],
];

let leave = null;
let shown = 0;

async function route() {
  const visit = ++shown;
  if (leave) leave();
  leave = null;
  const main = document.getElementById('main');
  const found = routes.find(([pattern]) => pattern.test(location.hash));
  if (!found) {
    fill(main, h('p', {}, 'No such page.'));
    return;
  }
  const [pattern, page] = found;
  try {
    const cleanup = await page(main, state, ...location.hash.match(pattern).slice(1));
    if (visit === shown) leave = cleanup || null;
    else if (cleanup) cleanup();
  } catch (error) {
    if (visit === shown) fill(main, h('p', { class: 'error' }, error.message));
  }
}

async function refreshSession() {
  state.session = await getJSON('/api/session');
  const place = document.getElementById('session');
  if (!state.session.token_configured) {
    fill(place, h('span', { class: 'muted' }, 'read-only'));
  } else if (state.session.authenticated) {
    const logOut = async () => {
      await postJSON('/api/logout', {});
      await refreshSession();
      route();
    };
    fill(place, h('span', { class: 'muted' }, 'logged in '), h('button', { type: 'button', onclick: logOut }, 'Log out'));
  } else {
    fill(place, h('a', { href: '#/login' }, 'Log in'));
  }
}

async function start() {
  state.site = await getJSON('/api/overview');
  await refreshSession();
  window.addEventListener('hashchange', route);
  await route();
}

start();
