"""Using the champion: the predict endpoint (``api``: FastAPI, standalone or inside Airflow; its request
model in ``schema``, the cached champion in ``champion``, the tokens, body cap, Airflow
permission check and guarded docs in ``guard``, the ledger and report pages in ``pages``),
batch scoring of listings (``score``), the Data Docs app (``datadocs_app``) and the lazy app the Airflow
plugins mount (``lazy``). ``python -m tasks.serving`` serves the endpoint on its own."""
