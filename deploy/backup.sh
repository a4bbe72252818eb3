#!/usr/bin/env bash
# Back up the FireWorks and job-store databases with mongodump (gzip archive per run).
#
#   deploy/backup.sh                 # compose: dumps inside the mongo container to deploy/backups/
#   MONGO_URI=mongodb://... deploy/backup.sh --host   # bare metal: mongodump on this machine
#
# Keeps the newest $KEEP archives (default 14). Restore (stop the workers first):
#   docker compose -f deploy/compose.yaml --env-file deploy/.env exec mongo \
#     mongorestore --gzip --archive=/backups/<file>.archive.gz --drop \
#       -u "$MONGO_INITDB_ROOT_USERNAME" -p "$MONGO_INITDB_ROOT_PASSWORD" --authenticationDatabase admin
#   # bare metal: mongorestore --uri "$MONGO_URI" --gzip --archive=<file> --drop
set -euo pipefail
cd "$(dirname "$0")"
KEEP="${KEEP:-14}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p backups
if [[ "${1:-}" == "--host" ]]; then
  : "${MONGO_URI:?set MONGO_URI (with credentials) for --host}"
  mongodump --uri "$MONGO_URI" --gzip --archive="backups/active-mlip-${stamp}.archive.gz"
else
  set -a; source ./.env; set +a
  docker compose -f compose.yaml --env-file .env exec -T mongo \
    mongodump -u "$MONGO_INITDB_ROOT_USERNAME" -p "$MONGO_INITDB_ROOT_PASSWORD" \
      --authenticationDatabase admin --gzip --archive="/backups/active-mlip-${stamp}.archive.gz"
fi
ls -1t backups/active-mlip-*.archive.gz | tail -n +"$((KEEP + 1))" | xargs -r rm --
echo "backup written: deploy/backups/active-mlip-${stamp}.archive.gz"
