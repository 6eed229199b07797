#!/usr/bin/env sh
# azd postprovision hook: grant the app's managed identity the two Graph application permissions it uses.
#   AdministrativeUnit.ReadWrite.All      add/remove members of administrative units (and their scoped roles)
#   RoleManagement.ReadWrite.Directory    add/remove members of directory roles, activate a role template
# Needs a Privileged Role Administrator (or Global Administrator) signed in to `az`. Idempotent.
# Set SKIP_GRAPH_PERMISSIONS=true to skip it and hand this script to such an administrator instead.
# National clouds: `az cloud set --name AzureUSGovernment | AzureChinaCloud` first; the Graph host follows the cloud.
set -eu

if [ "${SKIP_GRAPH_PERMISSIONS:-false}" = "true" ]; then
  echo "SKIP_GRAPH_PERMISSIONS=true: ask a Privileged Role Administrator to run infra/scripts/grant-graph-permissions.sh"
  exit 0
fi

principal="${MANAGED_IDENTITY_PRINCIPAL_ID:?run after azd provision (MANAGED_IDENTITY_PRINCIPAL_ID is an output)}"
graph_url=$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv | sed 's:/*$::')
graph_sp=$(az rest --method GET --url "$graph_url/v1.0/servicePrincipals(appId='00000003-0000-0000-c000-000000000000')?\$select=id" --query id -o tsv)

for permission in AdministrativeUnit.ReadWrite.All RoleManagement.ReadWrite.Directory; do
  role=$(az rest --method GET --url "$graph_url/v1.0/servicePrincipals/$graph_sp?\$select=appRoles" \
    --query "appRoles[?value=='$permission' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)
  existing=$(az rest --method GET --url "$graph_url/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --query "value[?appRoleId=='$role'].id | [0]" -o tsv)
  if [ -n "$existing" ]; then
    echo "$permission: already granted"
    continue
  fi
  az rest --method POST --url "$graph_url/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\": \"$principal\", \"resourceId\": \"$graph_sp\", \"appRoleId\": \"$role\"}" > /dev/null
  echo "$permission: granted"
done
