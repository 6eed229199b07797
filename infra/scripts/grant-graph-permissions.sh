#!/usr/bin/env sh
# Grants the app's managed identity the Microsoft Graph application permissions it uses, and nothing else:
#   AdministrativeUnit.ReadWrite.All             add and remove members of administrative units, and their scoped
#                                                roles
#   RoleManagement.ReadWrite.Directory           add and remove members of directory roles; activate a role template
#                                                (only used with GRANTS_ACTIVATE_ROLES=true)
#   RoleEligibilitySchedule.ReadWrite.Directory  PIM eligibilities (roleEligibility targets): schedule requests and
#                                                the schedules' reads
#   RoleAssignmentSchedule.ReadWrite.Directory   active PIM assignments (roleAssignment targets), likewise
# The drift check's reads (members of units and roles, scoped role memberships, PIM schedules) are covered by these.
# (RoleManagement.ReadWrite.Directory is a higher-privileged permission for the PIM requests too: the two
# least-privileged ones are granted so that what each target kind needs is named; docs/deploy.md.)
# An app role assignment on Microsoft Graph needs a Privileged Role Administrator (or Global Administrator)
# signed in to the Azure CLI (`az login`; azd's own sign-in is not used here). Safe to run again.
#
# Runs as azd's postprovision hook, with the deployment's outputs in the environment. Without that role, run
# `azd env set SKIP_GRAPH_PERMISSIONS true` and hand this script to an administrator, who runs:
#   sh grant-graph-permissions.sh <principal id> [<Graph root, e.g. https://graph.microsoft.us>]
# (the principal ID is MANAGED_IDENTITY_PRINCIPAL_ID in `azd env get-values`).
#
# National clouds: `az cloud set --name AzureUSGovernment` or `AzureChinaCloud` first. The Graph root comes
# from the second argument, else GRAPH_BASE_URL (a deployment output), else the signed-in cloud.
set -eu

if [ "${SKIP_GRAPH_PERMISSIONS:-false}" = "true" ]; then
  echo "SKIP_GRAPH_PERMISSIONS=true: Graph permissions not granted."
  echo "Ask a Privileged Role Administrator to run: sh infra/scripts/grant-graph-permissions.sh ${MANAGED_IDENTITY_PRINCIPAL_ID:-<principal id>}"
  exit 0
fi

principal="${1:-${MANAGED_IDENTITY_PRINCIPAL_ID:-}}"
if [ -z "$principal" ]; then
  echo "usage: $0 <managed identity principal id> [<Graph root>] (or run it as azd's postprovision hook)" >&2
  exit 2
fi

graph_base="${2:-${GRAPH_BASE_URL:-}}"
if [ -n "$graph_base" ]; then
  graph=$(printf '%s' "$graph_base" | sed -E 's#^(https://[^/]+).*#\1#')
else
  graph=$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv | sed 's:/*$::')
fi

graph_rest() {
  az rest --resource "$graph" "$@"
}

graph_app_id=00000003-0000-0000-c000-000000000000 # Microsoft Graph, the same in every tenant and cloud
graph_sp=$(graph_rest --method GET --url "$graph/v1.0/servicePrincipals(appId='$graph_app_id')?\$select=id" --query id -o tsv)

failed=0
for permission in AdministrativeUnit.ReadWrite.All RoleManagement.ReadWrite.Directory RoleEligibilitySchedule.ReadWrite.Directory RoleAssignmentSchedule.ReadWrite.Directory; do
  role=$(graph_rest --method GET --url "$graph/v1.0/servicePrincipals/$graph_sp?\$select=appRoles" \
    --query "appRoles[?value=='$permission' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)
  existing=$(graph_rest --method GET --url "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --query "value[?appRoleId=='$role' && resourceId=='$graph_sp'].id | [0]" -o tsv)
  if [ -n "$existing" ]; then
    echo "$permission: already granted"
    continue
  fi
  if graph_rest --method POST --url "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\": \"$principal\", \"resourceId\": \"$graph_sp\", \"appRoleId\": \"$role\"}" > /dev/null; then
    echo "$permission: granted"
  else
    echo "$permission: NOT granted (needs a Privileged Role Administrator)" >&2
    failed=1
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "The app cannot grant everything until all four permissions are granted. Either sign in to az as a" >&2
  echo "Privileged Role Administrator and run 'azd provision' again, or 'azd env set SKIP_GRAPH_PERMISSIONS true'" >&2
  echo "and hand infra/scripts/grant-graph-permissions.sh to one (docs/deploy.md, Graph permissions)." >&2
  exit 1
fi
