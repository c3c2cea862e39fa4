// The admin site's JSON endpoints.  Requests that change something carry X-Console, which a page
// of another origin cannot send without a preflight the admin site never grants.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
  }
}

async function answer(response) {
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function getJSON(path) {
  return answer(await fetch(path, { headers: { Accept: 'application/json' } }));
}

export async function postJSON(path, body) {
  const headers = { 'Content-Type': 'application/json', 'X-Console': '1' };
  return answer(await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) }));
}

// An upload to the main site, through the admin site: the image's details, as the main site gives.
export async function upload(namespace, file) {
  const headers = { 'Content-Type': 'application/octet-stream', 'X-Console': '1' };
  const url = `/api/upload/${namespace}`;
  return answer(await fetch(url, { method: 'POST', headers, body: file }));
}
