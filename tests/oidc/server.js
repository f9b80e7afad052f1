// A real OpenID provider (the `oidc-provider` package) for querygate's identity tests.
//
//   node server.js [--port N] [--keys-dir DIR]
//
// Listens on 127.0.0.1 (port 0: any free one) with the issuer http://127.0.0.1:PORT and
// prints one JSON line when ready: {"issuer", "port", "kid"}. What it serves:
//   - discovery, JWKS, token endpoint (oidc-provider itself);
//   - client credentials for agents: client `claude-code` / `agent-secret` (groups
//     ["agents"], kind "agent"), and `ci-runner` / `ci-secret` (kind "service");
//   - authorization code + PKCE for people through the public client `querygate-cli`,
//     with a minimal login at /interaction/:uid (users alice/alice-pw in "engineers",
//     bob/bob-pw in "contractors"); a POST there during the consent prompt grants it;
//   - RFC 8693 token exchange for `claude-code`: a person's token in, a token for the
//     person with `act: {sub: "claude-code", groups, kind}` out, signed with the current key.
// Every access token is a JWT (RS256) with `groups` and `kind` claims, scope "bigquery" (when
// asked for) and a 300 s lifetime. Its audience follows the RFC 8707 `resource` parameter:
//   - `urn:querygate` (the default when none is sent): aud "querygate";
//   - an absolute http:// URL on 127.0.0.1 or localhost (an MCP server under test, e.g.
//     http://127.0.0.1:PORT/mcp, as the MCP SDKs send it): aud is that URL, for both the
//     client-credentials agents and `querygate-cli`;
//   - anything else: invalid_target.
// (Token exchange takes and gives "querygate" tokens only.)
// An access token is for a resource as long as the request names one (or the default applies),
// whatever OIDC scopes ride along ("openid email bigquery", "openid", …). An authorization
// request without any `scope` is given the default scope "bigquery" (RFC 6749 §3.3), since
// oidc-provider denies a request that grants no scope at all.
// Test controls (this is a test IdP): POST /__test/rotate puts a new signing key first
// (the old one stays published) and answers {"kid"}; POST /__test/down and /__test/up make
// discovery and JWKS answer 503 or work again.
// With --keys-dir, the current private signing key is written there as signing-key.pem
// (its kid as kid.txt, its public half as public-key.pem), so tests can forge tokens "as the IdP" (expired, wrong aud …).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const keysDir = arg('--keys-dir', null);
const requestedPort = Number(arg('--port', '0'));

const RESOURCE = 'urn:querygate';
const AUDIENCE = 'querygate';
const TOKEN_TTL = 300;
const DEFAULT_SCOPE = 'bigquery';

/** The audience for a resource indicator: "querygate", a local MCP server's own URL, or none. */
function audienceFor(resource) {
  if (resource === RESOURCE) return AUDIENCE;
  const url = URL.parse(resource);
  if (url && url.protocol === 'http:' && ['127.0.0.1', 'localhost'].includes(url.hostname)
      && !url.username && !url.password && !url.hash) {
    return resource;
  }
  return undefined;
}

const ACCOUNTS = {
  alice: { password: 'alice-pw', groups: ['engineers'], email: 'alice@example.com' },
  bob: { password: 'bob-pw', groups: ['contractors'], email: 'bob@example.com' },
};
const AGENTS = {
  'claude-code': { groups: ['agents'], kind: 'agent' },
  'ci-runner': { groups: ['ci'], kind: 'service' },
};

/** @type {object[]} private JWKs, newest (the signing key) first */
let keys = [];
let down = false;
let provider;
let issuer;

async function newKey() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  jwk.kid = `k-${crypto.randomBytes(6).toString('hex')}`;
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  return jwk;
}

function writeKey() {
  if (!keysDir) return;
  fs.mkdirSync(keysDir, { recursive: true });
  const pem = crypto.createPrivateKey({ key: keys[0], format: 'jwk' }).export({ type: 'pkcs8', format: 'pem' });
  fs.writeFileSync(path.join(keysDir, 'signing-key.pem'), pem);
  fs.writeFileSync(path.join(keysDir, 'kid.txt'), keys[0].kid);
  const pub = crypto.createPublicKey({ key: keys[0], format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  fs.writeFileSync(path.join(keysDir, 'public-key.pem'), pub);
}

function extraClaims(token) {
  if (token.accountId && ACCOUNTS[token.accountId]) {
    const a = ACCOUNTS[token.accountId];
    return { groups: a.groups, kind: 'human', email: a.email };
  }
  const agent = AGENTS[token.clientId];
  return agent ? { groups: agent.groups, kind: agent.kind } : undefined;
}

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

async function tokenExchange(ctx) {
  const { client } = ctx.oidc;
  const subjectToken = ctx.oidc.params.subject_token;
  if (!subjectToken) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: 'subject_token is required' };
    return;
  }
  const publicKeys = jose.createLocalJWKSet({
    keys: keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
  });
  let subject;
  try {
    ({ payload: subject } = await jose.jwtVerify(subjectToken, publicKeys, { issuer, audience: AUDIENCE }));
  } catch (e) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_grant', error_description: `subject_token: ${e.code || e.message}` };
    return;
  }
  const now = Math.floor(Date.now() / 1000);
  const signing = keys[0];
  const token = await new jose.SignJWT({
    client_id: client.clientId,
    groups: subject.groups,
    kind: subject.kind,
    email: subject.email,
    act: { sub: client.clientId, groups: AGENTS[client.clientId]?.groups, kind: AGENTS[client.clientId]?.kind },
  })
    .setProtectedHeader({ alg: 'RS256', kid: signing.kid, typ: 'at+jwt' })
    .setIssuer(issuer)
    .setSubject(subject.sub)
    .setAudience(AUDIENCE)
    .setIssuedAt(now)
    .setExpirationTime(now + TOKEN_TTL)
    .setJti(crypto.randomBytes(12).toString('hex'))
    .sign(await jose.importJWK(signing, 'RS256'));
  ctx.body = {
    access_token: token,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: TOKEN_TTL,
  };
}

function build() {
  const p = new Provider(issuer, {
    clients: [
      {
        client_id: 'claude-code',
        client_secret: 'agent-secret',
        grant_types: ['client_credentials', EXCHANGE],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: 'ci-runner',
        client_secret: 'ci-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: 'querygate-cli',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
    ],
    jwks: { keys },
    ttl: {
      ClientCredentials: TOKEN_TTL, AccessToken: TOKEN_TTL, AuthorizationCode: 60,
      Interaction: 600, Session: 3600, Grant: 3600, IdToken: TOKEN_TTL,
    },
    cookies: { keys: ['test-cookie-secret'] },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          const audience = audienceFor(resource);
          if (!audience) throw new errors.InvalidTarget();
          return {
            scope: 'bigquery',
            audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: TOKEN_TTL,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    scopes: ['openid', 'email', 'bigquery'],
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: (ctx, id) => (ACCOUNTS[id]
      ? { accountId: id, claims: () => ({ sub: id, email: ACCOUNTS[id].email }) }
      : undefined),
    extraTokenClaims: (ctx, token) => extraClaims(token),
  });
  p.registerGrantType(EXCHANGE, tokenExchange, ['subject_token', 'subject_token_type', 'audience']);
  // RFC 6749 §3.3: an authorization request without a scope gets the default one (the MCP
  // SDKs leave scope out when neither the 401 nor any metadata names one).
  p.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth' && !ctx.query.scope) {
      ctx.query = { ...ctx.query, scope: DEFAULT_SCOPE };
    }
    await next();
  });
  return p;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve(new URLSearchParams(data)));
    req.on('error', reject);
  });
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function interaction(req, res) {
  const p = provider;
  const details = await p.interactionDetails(req, res);
  if (req.method === 'GET') {
    json(res, 200, { uid: details.uid, prompt: details.prompt.name });
    return;
  }
  if (details.prompt.name === 'consent') {
    // First-party test clients: grant what the request asks for.
    const { prompt: { details: missing }, params, session } = details;
    const grant = details.grantId
      ? await p.Grant.find(details.grantId)
      : new p.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await p.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  const form = await readBody(req);
  const login = form.get('login');
  const account = ACCOUNTS[login];
  if (!account || account.password !== form.get('password')) {
    await p.interactionFinished(req, res, { error: 'access_denied', error_description: 'wrong login or password' });
    return;
  }
  await p.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
}

async function admin(req, res) {
  if (req.method !== 'POST') return json(res, 405, { error: 'POST only' });
  if (req.url === '/__test/rotate') {
    keys = [await newKey(), ...keys];
    provider = build();
    writeKey();
    return json(res, 200, { kid: keys[0].kid });
  }
  if (req.url === '/__test/down') { down = true; return json(res, 200, { down }); }
  if (req.url === '/__test/up') { down = false; return json(res, 200, { down }); }
  return json(res, 404, { error: 'unknown test control' });
}

const server = http.createServer((req, res) => {
  const url = req.url || '/';
  (async () => {
    if (url.startsWith('/__test/')) return admin(req, res);
    if (down && (url.startsWith('/.well-known/') || url.startsWith('/jwks'))) {
      return json(res, 503, { error: 'temporarily_unavailable' });
    }
    if (url.startsWith('/interaction/')) return interaction(req, res);
    return provider.callback()(req, res);
  })().catch((e) => {
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(e && e.message) });
  });
});

keys = [await newKey()];
server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  provider = build();
  writeKey();
  process.stdout.write(`${JSON.stringify({ issuer, port, kid: keys[0].kid })}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
