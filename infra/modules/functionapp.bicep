// The Function App on the Flex Consumption plan, Python 3.11, running as the user-assigned identity.
param name string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerUrl string
param appInsightsConnectionString string
param serviceBusNamespaceFqdn string
param graphBaseUrl string
param maximumInstanceCount int
param graphWriteRate int
param activateRoles bool
param webhookSecretUri string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is region-limited; the queue, not the plan, holds the work
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222: azd deploys the package through the public endpoint; the app serves no HTTP routes yet
  //checkov:skip=CKV_AZURE_17: no HTTP routes; Service Bus triggers only (a webhook will carry its own HMAC auth)
  //checkov:skip=CKV_AZURE_212: Flex Consumption scales to zero by design; messages wait safely in the queue
  //checkov:skip=CKV_AZURE_213: no HTTP routes to probe; failures surface as dead-letters and outcome logs
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: { type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identityId }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: maximumInstanceCount, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage, by identity.
        { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
        // Application Insights: the connection string carries no secret with local auth disabled.
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
        // Service Bus trigger and retry-copy sender, by identity.
        { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: serviceBusNamespaceFqdn }
        { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
        { name: 'ServiceBusConnection__clientId', value: identityClientId }
        // The app (shared/config.py: APP_SETTINGS).
        { name: 'AZURE_CLIENT_ID', value: identityClientId }
        { name: 'GRAPH_BASE_URL', value: graphBaseUrl }
        { name: 'GRANTS_QUEUE', value: 'grant-membership' }
        { name: 'HR_EVENTS_QUEUE', value: 'hr-events' }
        { name: 'GRANTS_ACTIVATE_ROLES', value: activateRoles ? 'true' : 'false' }
        { name: 'GRANTS_MAX_ATTEMPTS', value: '8' }
        { name: 'GRANTS_RETRY_BASE_SECONDS', value: '10' }
        { name: 'GRANTS_RETRY_MAX_SECONDS', value: '900' }
        { name: 'GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS', value: '600' }
        { name: 'GRAPH_WRITE_RATE', value: string(graphWriteRate) }
        { name: 'GRANTS_POLICY', value: '' }
        { name: 'GRANTS_DRY_RUN', value: 'false' }
        { name: 'GRANTS_HR_RULES', value: '' }
        // Only ever a Key Vault reference, resolved by the platform with the identity.
        { name: 'GRANTS_WEBHOOK_SECRET', value: empty(webhookSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${webhookSecretUri})' }
      ]
    }
    keyVaultReferenceIdentity: identityId
  }
}

output name string = app.name
