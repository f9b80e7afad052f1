"""Reads query results as DataFrames and Arrow tables with google-cloud-bigquery-storage
installed, through querygate: run by test_dataframes.py with the storage venv's interpreter.

Prints one JSON object: what each path returned, and the Storage Read sessions the clients
asked for (`create_read_session`), so the test can assert both. The endpoint reaches the
clients as a user sets it: `client_options` for the plain client, `context` for the
`%%bigquery` magic, and BIGQUERY_EMULATOR_HOST (set by the test) for ibis, which builds its
own client. An attempt to reach bigquerystorage.googleapis.com fails here (no network).
"""
import json
import sys

from google.api_core.client_options import ClientOptions
from google.cloud import bigquery
from google.cloud import bigquery_storage_v1
from google.oauth2.credentials import Credentials

endpoint, project, key, sql = sys.argv[1:5]
sessions = []
original = bigquery_storage_v1.BigQueryReadClient.create_read_session


def spy(self, *args, **kwargs):
    sessions.append(repr(kwargs.get("parent") or args[:1]))
    return original(self, *args, **kwargs)


bigquery_storage_v1.BigQueryReadClient.create_read_session = spy
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


def magic():
    import bigquery_magics
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    shell.extension_manager.load_extension("bigquery_magics")
    bigquery_magics.context.credentials = Credentials(token=key)
    bigquery_magics.context.project = project
    bigquery_magics.context.bigquery_client_options = ClientOptions(api_endpoint=endpoint)
    shell.run_cell_magic("bigquery", "df", sql)
    return shell.user_ns["df"].to_dict("records")


def ibis_frame():
    import ibis
    con = ibis.bigquery.connect(project_id=project, credentials=Credentials(token=key))
    return con.sql(sql).to_pandas().to_dict("records")


attempt("%%bigquery", magic)
out["read_sessions"] = list(sessions)
attempt("ibis", ibis_frame)
out["ibis_read_sessions"] = sessions[len(out["read_sessions"]):]
print(json.dumps(out, default=str))
