"""Reads query results as DataFrames and Arrow tables with google-cloud-bigquery-storage
installed, through querygate: run by test_dataframes.py with the storage venv's interpreter.

Prints one JSON object: what each path returned, and whether the Storage Read API was asked
for (a gRPC client creation), so the test can assert both. Any attempt to reach
bigquerystorage.googleapis.com fails here (no network), and is reported as such.
"""
import json
import sys

from google.api_core.client_options import ClientOptions
from google.cloud import bigquery
from google.cloud import bigquery_storage_v1
from google.oauth2.credentials import Credentials

endpoint, project, key, sql = sys.argv[1:5]
created = []
original = bigquery_storage_v1.BigQueryReadClient.__init__


def spy(self, *args, **kwargs):
    created.append(repr(kwargs.get("client_options")))
    original(self, *args, **kwargs)


bigquery_storage_v1.BigQueryReadClient.__init__ = spy
client = bigquery.Client(project=project, credentials=Credentials(token=key),
                         client_options=ClientOptions(api_endpoint=endpoint))
out = {}


def attempt(name, fn):
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - the test reports what failed
        out[name] = f"ERROR {type(e).__name__}: {e}"[:500]


attempt("job.to_dataframe", lambda: client.query(sql).to_dataframe().to_dict("records"))
attempt("job.to_arrow", lambda: client.query(sql).to_arrow().to_pylist())
attempt("result.to_dataframe", lambda: client.query(sql).result().to_dataframe().to_dict("records"))
attempt("query_and_wait.to_arrow", lambda: client.query_and_wait(sql).to_arrow().to_pylist())
attempt("job.destination", lambda: repr(client.query(sql).destination))


out["storage_clients_created"] = created
print(json.dumps(out, default=str))
