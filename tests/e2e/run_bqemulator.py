#!/usr/bin/env python3
"""Start the bqemulator BigQuery emulator (PyPI, 1.4.x) without network access.

Stock ``bqemulator start`` is unusable offline / with the Python client, so this
launcher adjusts two things in-process and then hands over to the real CLI
(all arguments are passed through, e.g. ``start --rest-port 9050 ...``):

1. The DuckDB ``spatial`` extension becomes optional.  Stock bqemulator runs
   ``INSTALL spatial`` at start-up (a download from the DuckDB extension site)
   and aborts if that fails.  Here we only try ``LOAD spatial`` (which succeeds
   if the extension happens to be installed locally) and otherwise carry on
   with GEOGRAPHY unsupported.  No download is attempted.

2. ``*/*`` is accepted as the media Content-Type of an upload.  The Python
   client sends ``*/*`` for the media part of every ``load_table_from_json`` /
   ``load_table_from_file``; stock bqemulator rejects that with a 400.

Run with the interpreter of the venv that has bqemulator installed.
"""
from __future__ import annotations

import sys


def _patch_spatial() -> None:
    from bqemulator.storage import engine

    def load_spatial_if_present(self) -> None:  # replaces DuckDBEngine._load_spatial
        conn = getattr(self, "_connection", None)
        if conn is None:
            return
        try:
            conn.execute("LOAD spatial")
        except Exception as exc:  # noqa: BLE001 - any failure just disables GEOGRAPHY
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            sys.stderr.write(f"[run_bqemulator] GEOGRAPHY disabled (no spatial extension): {first_line}\n")

    if not hasattr(engine.DuckDBEngine, "_load_spatial"):
        raise SystemExit("run_bqemulator: bqemulator internals changed (no DuckDBEngine._load_spatial); "
                         "check the pinned version in requirements-emu.txt")
    engine.DuckDBEngine._load_spatial = load_spatial_if_present


def _patch_media_types() -> None:
    from bqemulator.api.routes import upload

    original = getattr(upload, "_is_permitted_media_type", None)
    if original is None:
        raise SystemExit("run_bqemulator: bqemulator internals changed (no upload._is_permitted_media_type); "
                         "check the pinned version in requirements-emu.txt")

    def is_permitted(media_ct: str) -> bool:
        if media_ct.split(";", 1)[0].strip() == "*/*":
            return True
        return original(media_ct)

    # The route module looks the helper up as a module global at call time.
    upload._is_permitted_media_type = is_permitted


def main() -> None:
    _patch_spatial()
    _patch_media_types()
    from bqemulator.cli import main as cli_main

    sys.argv[0] = "bqemulator"
    cli_main()


if __name__ == "__main__":
    main()
