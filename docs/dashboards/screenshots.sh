#!/usr/bin/env bash
# Screenshots of the dashboards after `make run`, with Debian's headless Chromium (installed by
# hand: `apt-get install chromium`; the test suite never installs it). Starts `mlflow ui` on the
# project's mlflow.db and `prefect server` on its default database, then saves PNGs here.
#   docs/dashboards/screenshots.sh RUN_ID VERSION     (the flow run: the latest `retrain`)
set -euo pipefail
cd "$(dirname "$0")/../.."
run_id=$1 version=$2
out=docs/dashboards
exp=$(.venv/bin/python -c "import mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db'); print(mlflow.get_run('$run_id').info.experiment_id)")
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$PWD/mlflow.db" --host 127.0.0.1 --port 5055 >/tmp/mlflow-ui.log 2>&1 &
ui=$!
PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL=http://127.0.0.1:4255/api .venv/bin/prefect server start --host 127.0.0.1 --port 4255 >/tmp/prefect-ui.log 2>&1 &
pf=$!
trap 'kill $ui $pf 2>/dev/null || true' EXIT
for url in http://127.0.0.1:5055/health http://127.0.0.1:4255/api/health; do
  for _ in $(seq 60); do curl -sf "$url" >/dev/null && break; sleep 1; done
done
flow_run=$(curl -sf -X POST http://127.0.0.1:4255/api/flow_runs/filter -H 'content-type: application/json' \
  -d '{"flow_runs": {"name": {"like_": "retrain-"}}, "sort": "START_TIME_DESC", "limit": 1}' |
  .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)[0]['id'])")
shot() {  # name url [height]
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --window-size=1500,"${3:-1100}" --virtual-time-budget=60000 --screenshot="$out/$1.png" "$2" 2>/dev/null
}
m=http://127.0.0.1:5055/#/experiments/$exp/runs/$run_id
shot mlflow-run "$m" 1400
last=$(ls mlartifacts/"$run_id"/artifacts/images/ | grep '^validation_samples.*[0-9a-f]\.png$' | sort -t+ -k3 -n | tail -1)
shot mlflow-validation-samples "$m/artifacts/images/$last" 900
shot mlflow-eval-table "$m/artifacts/eval/rows.json" 1000
shot mlflow-version "http://127.0.0.1:5055/#/models/metagen/versions/$version" 1100
shot prefect-flow-run "http://127.0.0.1:4255/runs/flow-run/$flow_run?tab=Artifacts" 1000
ls -la "$out"/*.png
