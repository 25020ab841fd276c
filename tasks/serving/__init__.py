"""Using the champion: the predict endpoint (FastAPI, standalone or inside Airflow), batch scoring of
listings files, and the HTML pages (ledger, reports)."""
