// entra-grants: a Function App (Flex Consumption) that grants Entra ID memberships from Service Bus messages.
// Every connection is identity-based (one user-assigned managed identity); no keys, no connection strings.
targetScope = 'resourceGroup'

@description('Short name for the environment (azd sets it).')
param environmentName string

@description('Azure region.')
param location string = resourceGroup().location

@description('Graph root: https://graph.microsoft.com/v1.0 (global), https://graph.microsoft.us/v1.0 (US Gov L4), https://dod-graph.microsoft.us/v1.0 (US Gov L5), https://microsoftgraph.chinacloudapi.cn/v1.0 (21Vianet).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('Most instances the app scales to. With host.json maxConcurrentCalls (16) it bounds the write rate against Graph (3,000 writes per 150 s per app and tenant).')
@minValue(1)
@maxValue(100)
param maximumInstanceCount int = 4

@description('Let the app activate a directory role from its template on first use.')
param activateRoles bool = false

@description('Key Vault secret URI of the ticketing webhook secret (optional).')
param webhookSecretUri string = ''

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = { 'azd-env-name': environmentName }

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: { name: 'id-grants-${token}', location: location, tags: tags }
}

module servicebus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: { name: 'sb-grants-${token}', location: location, tags: tags }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: { name: 'stgrants${token}', location: location, tags: tags }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: { name: 'grants-${token}', location: location, tags: tags }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-grants-${token}'
    location: location
    tags: union(tags, { 'azd-service-name': 'api' })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.connectionString
    serviceBusNamespaceFqdn: servicebus.outputs.fullyQualifiedNamespace
    graphBaseUrl: graphBaseUrl
    maximumInstanceCount: maximumInstanceCount
    graphWriteRate: max(1, 20 / maximumInstanceCount)
    activateRoles: activateRoles
    webhookSecretUri: webhookSecretUri
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    serviceBusNamespaceName: servicebus.outputs.name
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output SERVICE_BUS_NAMESPACE string = servicebus.outputs.fullyQualifiedNamespace
output GRAPH_BASE_URL string = graphBaseUrl
