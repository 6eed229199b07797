#!/usr/bin/env bash
# Registers the Entra application that guards the app's HTTP API (App Service authentication), once per deployment,
# with the two app roles the app reads (shared/core/access.py): Grants.Reader (read every producer's requests, the
# history and the drift report) and Grants.Operator (also confirm drift holds). Then `azd env set API_CLIENT_ID` and
# `azd provision` turn authentication on. Needs an Entra role that may register applications (Application
# Developer, or Application Administrator to assign the roles below). docs/deploy.md, "The HTTP API".
#
# Usage: infra/scripts/register-api.sh [display name]   (default: grants-api-$AZURE_ENV_NAME)
set -euo pipefail

name="${1:-grants-api-${AZURE_ENV_NAME:-entra-grants}}"
roles=$(cat <<'JSON'
[
  {"allowedMemberTypes": ["User", "Application"], "description": "Read every producer's requests, jobs, HR events, history and the drift report.",
   "displayName": "Grants reader", "isEnabled": true, "value": "Grants.Reader", "id": "3d2c1b0a-0000-4000-8000-00000000a001"},
  {"allowedMemberTypes": ["User", "Application"], "description": "Read all, and operate: confirm the removals the drift guard holds.",
   "displayName": "Grants operator", "isEnabled": true, "value": "Grants.Operator", "id": "3d2c1b0a-0000-4000-8000-00000000a002"}
]
JSON
)
existing=$(az ad app list --display-name "$name" --query '[0].appId' -o tsv)
if [ -n "$existing" ]; then
  app_id="$existing"
  echo "application $name exists: $app_id"
else
  app_id=$(az ad app create --display-name "$name" --sign-in-audience AzureADMyOrg --app-roles "$roles" --query appId -o tsv)
  echo "registered application $name: $app_id"
fi
az ad app update --id "$app_id" --identifier-uris "api://$app_id"
az ad sp show --id "$app_id" >/dev/null 2>&1 || az ad sp create --id "$app_id" >/dev/null
echo "next: azd env set API_CLIENT_ID $app_id && azd provision"
echo "grant a role, e.g.: az rest --method POST --uri https://graph.microsoft.com/v1.0/servicePrincipals/<caller sp id>/appRoleAssignments \\"
echo "  --body '{\"principalId\": \"<caller sp id>\", \"resourceId\": \"<this app's sp id>\", \"appRoleId\": \"3d2c1b0a-0000-4000-8000-00000000a001\"}'"
