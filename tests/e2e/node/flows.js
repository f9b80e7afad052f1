#!/usr/bin/env node
// Node client (@google-cloud/bigquery 8.x) flows through querygate.
// Run by tests/e2e/test_bigquery_node.py; prints ONE JSON object on stdout:
//   {"<flow>": {"ok": true, ...result} | {"ok": false, "error": {...}}, ...}
// so that pytest does the asserting.
//
// Environment:
//   E2E_ENDPOINT  api root (gateway, or the emulator in self-check mode)
//   E2E_KEY       API key, sent as "Authorization: Bearer <key>"
//   E2E_PROJECT   project id (default test-project)
//   E2E_DATASET / E2E_TABLE   (default shop / customers)
//   E2E_GATEWAY   "1": also run the flows that only make sense through the gateway
//                 (denied insert, wrong key); never run those against the emulator.
'use strict';

const {BigQuery} = require('@google-cloud/bigquery');
const {OAuth2Client} = require('google-auth-library');

const endpoint = process.env.E2E_ENDPOINT;
const key = process.env.E2E_KEY;
const projectId = process.env.E2E_PROJECT || 'test-project';
const datasetId = process.env.E2E_DATASET || 'shop';
const tableId = process.env.E2E_TABLE || 'customers';
const viaGateway = process.env.E2E_GATEWAY === '1';
if (!endpoint || !key) {
  console.error('E2E_ENDPOINT and E2E_KEY are required');
  process.exit(2);
}
const tableSql = '`' + `${projectId}.${datasetId}.${tableId}` + '`';

function client(token) {
  const authClient = new OAuth2Client();
  // A fixed access token; far-future expiry so the library never tries to refresh it.
  authClient.setCredentials({access_token: token, expiry_date: Date.now() + 3600e3});
  // Library defaults otherwise (autoRetry on), as a user would have them: a denial
  // must still come back at once.
  return new BigQuery({projectId, apiEndpoint: endpoint, authClient});
}

function plain(v) {
  // BigQueryTimestamp & co. -> their string value; keeps the JSON readable for pytest.
  if (v && typeof v === 'object' && 'value' in v && Object.keys(v).length === 1) return v.value;
  return v;
}
function rowsToPlain(rows) {
  return rows.map(r => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, plain(v)])));
}
function errorInfo(e) {
  return {
    name: e && e.name,
    code: e && e.code,
    message: String(e && e.message),
    reason: e && e.errors && e.errors[0] && e.errors[0].reason,
    errors: e && e.errors,
  };
}

async function run(out, name, fn) {
  const t0 = Date.now();
  try {
    out[name] = Object.assign({ok: true}, await fn());
  } catch (e) {
    out[name] = {ok: false, error: errorInfo(e)};
  }
  out[name].ms = Date.now() - t0;
}

async function main() {
  const bq = client(key);
  const table = bq.dataset(datasetId).table(tableId);
  const out = {};

  await run(out, 'query', async () => {
    const sql = `SELECT id, name, email FROM ${tableSql} WHERE id <= 4 ORDER BY id`;
    const res = await bq.query(sql);
    const resp = res[res.length - 1] || {};
    return {sql, rows: rowsToPlain(res[0]), jobId: resp.jobReference && resp.jobReference.jobId};
  });

  await run(out, 'query_params', async () => {
    const sql = `SELECT id, score FROM ${tableSql} WHERE id BETWEEN @lo AND @hi ORDER BY id`;
    const res = await bq.query({query: sql, params: {lo: 5, hi: 6}});
    const resp = res[res.length - 1] || {};
    return {sql, rows: rowsToPlain(res[0]), jobId: resp.jobReference && resp.jobReference.jobId};
  });

  await run(out, 'getRows', async () => {
    const [rows] = await table.getRows({maxResults: 7});
    return {rows: rowsToPlain(rows)};
  });

  if (viaGateway) {
    await run(out, 'insert_denied', async () => {
      await table.insert([{id: 77, name: 'Node Mallory', email: 'node.mallory@example.com'}]);
      return {inserted: true};
    });
    await run(out, 'wrong_key', async () => {
      const [rows] = await client('qg_e2e_node-wrong-key').query(`SELECT id FROM ${tableSql}`);
      return {rows: rowsToPlain(rows)};
    });
  }

  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
