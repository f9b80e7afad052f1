// Drives querygate's PostgreSQL front with node-postgres: a parameterized query (extended
// protocol), a cursor read in pages (Execute with a row limit: PortalSuspended), a denied
// statement, and prints what the application would see as one JSON line.
import pg from "pg";
import Cursor from "pg-cursor";

const [port, database, password] = process.argv.slice(2);
const client = new pg.Client({ host: "127.0.0.1", port: Number(port), database, user: "agent", password });
await client.connect();
const out = {};
out.param = (await client.query("SELECT n FROM numbers WHERE n BETWEEN $1 AND $2 ORDER BY n", [5, 7])).rows;
out.masked = (await client.query("SELECT ssn FROM customers WHERE id = $1", [1])).rows;
const cursor = client.query(new Cursor("SELECT n FROM numbers ORDER BY n"));
const first = await cursor.read(3);
const second = await cursor.read(2);
await cursor.close();
out.pages = [first.map((r) => r.n), second.map((r) => r.n)];
try {
  await client.query("SELECT * FROM hr.people WHERE id = $1", [1]);
  out.denied = null;
} catch (e) {
  out.denied = { code: e.code, message: e.message };
}
out.after = (await client.query("SELECT 1 AS one")).rows;
await client.end();
console.log(JSON.stringify(out));
