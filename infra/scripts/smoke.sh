#!/usr/bin/env sh
# Runs `grants smoke` against the deployment azd just made: a dry-run grant through the deployed grants queue, the
# app identity's Microsoft Graph permissions and Service Bus roles, a PASS/FAIL line for each, with the fix for a
# failure (README, Operations). Runs as azd's postdeploy hook, with the deployment's outputs in the environment
# (MANAGED_IDENTITY_PRINCIPAL_ID, SERVICE_BUS_NAMESPACE, SERVICE_BUS_NAMESPACE_ID, APPLICATIONINSIGHTS_ID,
# GRANTS_QUEUE, GRAPH_BASE_URL); by hand: eval "$(azd env get-values)"; sh infra/scripts/smoke.sh
#
# Signs in with DefaultAzureCredential (az login): the signed-in identity needs Azure Service Bus Data Sender on
# the namespace, to read role assignments there and service principals in Entra ID, and to read the Application
# Insights component. `azd env set SKIP_SMOKE true` skips it; GRANTS_SMOKE_TIMEOUT (seconds, default 180) bounds
# the wait for the dry run's outcome.
set -eu

if [ "${SKIP_SMOKE:-false}" = "true" ]; then
  echo "SKIP_SMOKE=true: smoke check skipped. Run it later with: sh infra/scripts/smoke.sh"
  exit 0
fi

cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/grants ]; then
  make .venv/.runtime # the app's requirements and the grants command, in .venv
fi
exec .venv/bin/grants smoke --timeout "${GRANTS_SMOKE_TIMEOUT:-180}"
