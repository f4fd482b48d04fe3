#!/bin/sh
# Writes the basic-auth config from the environment, then runs the given command (mlflow server ...).
#
# MLflow reads the auth app's settings from an INI file (MLFLOW_AUTH_CONFIG_PATH), which cannot expand
# environment variables; the user database URI holds the database password, so it is written here, at
# start, into a file only this user can read, instead of being baked into the image or a ConfigMap.
#   MLFLOW_AUTH_DATABASE_URI        where users and permissions live (e.g. postgresql://.../mlflow_auth)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  READ (default), EDIT, MANAGE or NO_PERMISSIONS
#   MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD are read by MLflow itself (first start only).
# Passwords inside URIs must be URL-safe and free of '%' (use `openssl rand -hex 24`).
set -eu

if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
    umask 077
    cfg="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-auth/basic_auth.ini}"
    mkdir -p "$(dirname "$cfg")"
    cat > "$cfg" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$cfg"
fi

exec "$@"
