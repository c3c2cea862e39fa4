// The login form: the admin token, for a cookie that lets this browser upload and sign.
import { postJSON } from '../api.js';
import { fill, h } from '../dom.js';

export async function loginPage(main, state) {
  const token = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, 'aria-label': 'admin token' });
  const problem = h('p', { class: 'error', hidden: true });
  const form = h('form', { class: 'login' },
    h('label', {}, 'Admin token ', token),
    h('button', { type: 'submit' }, 'Log in'),
    problem);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await postJSON('/api/login', { token: token.value });
      await state.refresh();
      location.hash = '#/namespaces';
    } catch (error) {
      fill(problem, error.message);
      problem.hidden = false;
    }
  });
  fill(main,
    h('h1', {}, 'Log in'),
    state.session.token_configured
      ? [h('p', {}, 'Uploading and signing URLs need the server\'s --admin-token.'), form]
      : h('p', {}, 'This server has no --admin-token: the console only reads.'));
  main.dataset.page = 'login';
}
