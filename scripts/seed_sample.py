"""Create the sample dataset `shop.customers` in a BigQuery emulator (used by scripts/run).

Talks to the emulator directly with AnonymousCredentials: this is the upstream's own
data, loaded before the gateway starts.
"""
import sys

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

endpoint = sys.argv[1]
client = bigquery.Client(project="test-project", credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=endpoint))
client.create_dataset("shop", exists_ok=True)
table = bigquery.Table("test-project.shop.customers", schema=[
    bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
    bigquery.SchemaField("name", "STRING"),
    bigquery.SchemaField("email", "STRING"),
    bigquery.SchemaField("score", "FLOAT64"),
])
client.delete_table(table, not_found_ok=True)
client.create_table(table)
names = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra", "Barbara Liskov"]
rows = [{"id": i + 1, "name": n, "email": n.lower().replace(" ", ".") + "@example.com",
         "score": (i + 1) * 1.5} for i, n in enumerate(names)]
errors = client.insert_rows_json("test-project.shop.customers", rows)
if errors:
    sys.exit(f"seeding failed: {errors}")
print(f"seeded test-project.shop.customers with {len(rows)} rows", file=sys.stderr)
