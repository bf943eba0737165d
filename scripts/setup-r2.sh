#!/usr/bin/env bash
# Step 1 of the setup guide: create the R2 bucket (idempotent), set CORS when asked, and expire
# stale session objects. Uses the same environment as the API:
#   R2_ACCOUNT_ID (or S3_ENDPOINT_URL), R2_BUCKET, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY
#   ./scripts/setup-r2.sh [--cors-origin https://app.example.com] [--session-days 7]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bootstrap.sh
ensure_venv requirements-local.txt
exec .venv/bin/python -m scripts.setup_r2 "$@"
