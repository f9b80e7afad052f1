// Drives querygate's MCP front with the official TypeScript SDK's client over Streamable
// HTTP: list the tools, make each call given, print what the agent would read as JSON.
// Usage: node drive.mjs URL KEY CALLS_JSON
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, callsJson] = process.argv.slice(2);
const calls = JSON.parse(callsJson);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "querygate-e2e", version: "0.0.0" });
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name);
const results = [];
for (const [name, args] of calls) {
  const r = await client.callTool({ name, arguments: args });
  results.push({
    is_error: Boolean(r.isError),
    structured: r.structuredContent ?? null,
    texts: (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text),
  });
}
console.log(JSON.stringify({ tools, results }));
await client.close();
