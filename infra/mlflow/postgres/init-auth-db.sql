-- Runs once, when the PostgreSQL data directory is first initialised (docker-entrypoint-initdb.d):
-- a second database for MLflow's users and permissions, next to the tracking store `mlflow`.
CREATE DATABASE mlflow_auth;
