-- The release ledger has a database of its own beside Airflow's metadata database.
CREATE DATABASE releasetrain_ledger;
