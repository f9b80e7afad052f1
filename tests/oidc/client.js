// Gets tokens from the test OpenID provider (server.js) the way real clients do, and
// prints the access token on stdout. Used by the Rust and Python tests.
//
//   node client.js agent ISSUER CLIENT_ID SECRET             client credentials
//   node client.js login ISSUER USER PASSWORD                authorization code + PKCE
//   node client.js exchange ISSUER CLIENT_ID SECRET TOKEN    RFC 8693 token exchange
//   node client.js authorize AUTH_URL USER PASSWORD          log in for someone else's request
//
// `agent` and `login` ask for the resource $QG_RESOURCE (RFC 8707; default urn:querygate, whose
// tokens have aud "querygate"; an MCP server's URL such as http://127.0.0.1:PORT/mcp gets
// tokens with that URL as aud).
// `authorize` takes a complete authorization URL built by another client (the MCP SDK: it
// carries client_id, redirect_uri, PKCE challenge, state, resource, scope), logs USER in
// through the provider's interaction pages like `login` does, and prints the redirect back
// to that client (REDIRECT_URI?code=…&state=…) instead of a token: the code is the caller's
// to exchange.
//
// Exits non-zero with the provider's error on stderr when a step fails.

import * as crypto from 'node:crypto';

const [command, target, ...rest] = process.argv.slice(2);
/** The provider's origin: the ISSUER argument, or where the authorization URL points. */
const issuer = command === 'authorize' ? URL.parse(target)?.origin : target;
const RESOURCE = process.env.QG_RESOURCE || 'urn:querygate';
const CLI_REDIRECT = 'http://127.0.0.1/callback';

function fail(message) {
  process.stderr.write(`client.js ${command}: ${message}\n`);
  process.exit(1);
}

async function token(form, auth) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (auth) headers.authorization = `Basic ${Buffer.from(`${auth[0]}:${auth[1]}`).toString('base64')}`;
  const res = await fetch(`${issuer}/token`, { method: 'POST', headers, body: new URLSearchParams(form) });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.access_token) fail(`token endpoint: HTTP ${res.status} ${JSON.stringify(body)}`);
  return body.access_token;
}

/** A tiny cookie jar: enough for the provider's interaction and session cookies. */
const jar = new Map();
function remember(res) {
  for (const c of res.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    jar.set(pair.slice(0, i), pair.slice(i + 1));
  }
}
function cookies() {
  return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
}
async function go(url, init = {}) {
  const res = await fetch(new URL(url, issuer), {
    ...init,
    redirect: 'manual',
    headers: { ...(init.headers || {}), cookie: cookies() },
  });
  remember(res);
  return res;
}

/** What a response that is not a redirect says: the provider's error page or JSON, shortened. */
async function said(res) {
  const text = await res.text().catch(() => '');
  const fields = [...text.matchAll(/<pre><strong>([^<]*)<\/strong>: ([^<]*)<\/pre>/g)];
  return fields.length ? fields.map(([, k, v]) => `${k}: ${v}`).join(', ') : text.slice(0, 300);
}

/**
 * Walks the provider's login for an authorization request: follows its redirects, posts
 * USER/PASSWORD to /interaction/UID/login (a later POST there grants consent), and returns
 * the redirect back to the client (its redirect_uri with code and state).
 */
async function authorize(authUrl, user, password) {
  const redirect = new URL(authUrl).searchParams.get('redirect_uri') || CLI_REDIRECT;
  let res = await go(authUrl);
  let location = res.headers.get('location');
  for (let hop = 0; hop < 10 && location && !location.startsWith(redirect); hop += 1) {
    if (location.includes('/interaction/')) {
      const uid = location.split('/interaction/')[1].split(/[/?]/)[0];
      res = await go(`/interaction/${uid}/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ login: user, password }),
      });
    } else {
      res = await go(location);
    }
    location = res.headers.get('location');
  }
  if (!location || !location.startsWith(redirect)) {
    fail(`login did not come back to the client (HTTP ${res.status}, ${location || await said(res)})`);
  }
  const params = new URL(location).searchParams;
  if (params.get('error')) fail([params.get('error'), params.get('error_description')].filter(Boolean).join(': '));
  return location;
}

async function login(user, password) {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: 'querygate-cli',
    response_type: 'code',
    redirect_uri: CLI_REDIRECT,
    scope: 'openid email bigquery',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    resource: RESOURCE,
    state: crypto.randomBytes(8).toString('hex'),
  }).toString();
  const callback = await authorize(auth.href, user, password);
  return token({
    grant_type: 'authorization_code',
    code: new URL(callback).searchParams.get('code'),
    redirect_uri: CLI_REDIRECT,
    code_verifier: verifier,
    client_id: 'querygate-cli',
    resource: RESOURCE,
  });
}

let result;
if (command === 'agent') {
  const [clientId, secret] = rest;
  result = await token({ grant_type: 'client_credentials', resource: RESOURCE, scope: 'bigquery' }, [clientId, secret]);
} else if (command === 'login') {
  result = await login(rest[0], rest[1]);
} else if (command === 'exchange') {
  const [clientId, secret, subjectToken] = rest;
  result = await token({
    grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
    subject_token: subjectToken,
    subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
  }, [clientId, secret]);
} else if (command === 'authorize') {
  if (!issuer || rest.length < 2) fail('usage: authorize AUTH_URL USER PASSWORD');
  result = await authorize(target, rest[0], rest[1]);
} else {
  fail('usage: agent|login|exchange ISSUER … | authorize AUTH_URL USER PASSWORD');
}
process.stdout.write(`${result}\n`);
