#!/usr/bin/env bash
# Switch this repository's default DVC remote from the local folder to S3 (or an S3-compatible
# store). Credentials go to .dvc/config.local (git-ignored) or come from the usual AWS variables.
#   infra/dvc/use-s3-remote.sh s3://BUCKET/metagen [ENDPOINT_URL]
# Needs the S3 plugin where you push/pull: pip install dvc-s3
set -euo pipefail
url=${1:?usage: use-s3-remote.sh s3://bucket/path [endpoint-url]}
endpoint=${2:-}
case "$url" in s3://*) ;; *) echo "expected an s3:// URL, got $url" >&2; exit 2 ;; esac
dvc remote add --force --default s3 "$url"
if [ -n "$endpoint" ]; then
  dvc remote modify s3 endpointurl "$endpoint"
fi
if [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
  dvc remote modify --local s3 access_key_id "$AWS_ACCESS_KEY_ID"
  dvc remote modify --local s3 secret_access_key "$AWS_SECRET_ACCESS_KEY"
fi
dvc remote list
