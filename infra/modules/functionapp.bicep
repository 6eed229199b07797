// The Function App: Flex Consumption (FC1), Python 3.11, running as the user-assigned identity.
// Every connection is identity-based; the only app settings are names, endpoints and tuning values.
param name string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerUrl string
param appInsightsConnectionString string
param serviceBusNamespaceFqdn string
param grantsQueue string
param grantsBulkQueue string
param hrEventsQueue string
param outcomesTopic string
param callbackQueue string
@description('The queues\' maxDeliveryCount as deployed (servicebus.bicep\'s output): GRANTS_MAX_DELIVERY_COUNT.')
@minValue(2)
param maxDeliveryCount int
@description('GRANTS_CALLBACK_HOSTS: JSON, source system -> host names callbacks may go to; empty: no callbacks.')
param callbackHosts string
param graphBaseUrl string
param maximumInstanceCount int
param graphWriteRate string
param graphWritePacing string
param activateRoles bool
param webhookSecretUri string
param grantsPolicy string
param hrRules string
param ledgerTableServiceUri string
param ledgerTableName string
@description('The worker exports logs and dependencies with OpenTelemetry (outcome fields as customDimensions).')
param openTelemetry bool
@description('GRANTS_PRODUCERS: the producer registry as JSON (main.bicep); empty: the built-in one.')
param producersSetting string
@description('The API\'s Entra app registration (App Service authentication); empty: authentication off.')
param apiClientId string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption exists only in some regions; the work waits in the queue, not on the plan, so an outage delays grants and loses none
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222: azd deploys the package through the app's public (SCM) endpoint, and the ticketing webhook must be reachable by SaaS ticketing systems; each webhook request needs the function key and an HMAC signature inside a 5-minute window
  //checkov:skip=CKV_AZURE_17: ticketing systems do not present client certificates; the webhook authenticates each request itself (function key + HMAC-SHA256 signature with a replay window)
  //checkov:skip=CKV_AZURE_212: Flex Consumption scales to zero by design; undelivered messages wait in the queue (always-ready instances only cost money here)
  //checkov:skip=CKV_AZURE_213: no health route (the only HTTP route is the signed webhook); failures surface as dead-letters and outcome log lines
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
    // Resolves Key Vault references (GRANTS_WEBHOOK_SECRET) with the app's identity, not a system one it lacks.
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: { type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identityId }
        }
      }
      // maximumInstanceCount x host.json maxConcurrentCalls (16, per queue) bounds the grants in flight; the
      // instances share Graph's write quota by adaptive pacing, or GRAPH_WRITE_RATE x maximumInstanceCount bounds
      // it with static pacing (docs/deploy.md, Sizing).
      scaleAndConcurrency: { maximumInstanceCount: maximumInstanceCount, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // The whole list is written on every deployment: a setting missing here is removed from the app.
      appSettings: [
        // Host storage, by identity (no AzureWebJobsStorage connection string).
        { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
        // Application Insights, by identity: the connection string only locates the component.
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
        // The deployment choice openTelemetry (README, Operations): the Python worker configures the Azure Monitor
        // OpenTelemetry distro (requirements.txt) and exports its logs itself, the outcome lines' fields as
        // customDimensions (shared/adapters/telemetry.py); the host switches to OpenTelemetry too (this setting
        // overrides host.json's telemetryMode). Off: the classic path, fields only in the JSON of the message.
        { name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY', value: openTelemetry ? 'true' : 'false' }
        { name: 'AzureFunctionsJobHost__telemetryMode', value: openTelemetry ? 'OpenTelemetry' : 'ApplicationInsights' }
        // Service Bus trigger and the retry-copy sender, by identity.
        { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: serviceBusNamespaceFqdn }
        { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
        { name: 'ServiceBusConnection__clientId', value: identityClientId }
        // What the code reads (shared/config.py, APP_SETTINGS; infra/tests checks the two agree).
        { name: 'AZURE_CLIENT_ID', value: identityClientId }
        { name: 'GRAPH_BASE_URL', value: graphBaseUrl }
        { name: 'GRANTS_QUEUE', value: grantsQueue }
        { name: 'GRANTS_BULK_QUEUE', value: grantsBulkQueue }
        { name: 'HR_EVENTS_QUEUE', value: hrEventsQueue }
        // HR effective dates start (and leavers' access ends) at midnight in this IANA zone.
        { name: 'HR_TIME_ZONE', value: 'UTC' }
        { name: 'GRANTS_ACTIVATE_ROLES', value: activateRoles ? 'true' : 'false' }
        { name: 'GRANTS_MAX_ATTEMPTS', value: '8' }
        // The queues' maxDeliveryCount, derived from the entities (servicebus.bicep's output): the app dead-letters the
        // last delivery itself, with its reason.
        { name: 'GRANTS_MAX_DELIVERY_COUNT', value: string(maxDeliveryCount) }
        { name: 'GRANTS_RETRY_BASE_SECONDS', value: '10' }
        { name: 'GRANTS_RETRY_MAX_SECONDS', value: '900' }
        { name: 'GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS', value: '600' }
        // A member not found yet is waited for longer for HR joiners, briefly for a bulk job's mistyped ids, and
        // given up only after at least this many attempts (time spent queued is not failing).
        { name: 'GRANTS_MEMBER_NOT_FOUND_WINDOWS', value: 'bulk=120,hr=3600' }
        { name: 'GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS', value: '5' }
        { name: 'GRAPH_WRITE_RATE', value: graphWriteRate }
        { name: 'GRANTS_SETTLEMENT_TIMEOUT_SECONDS', value: '5' }
        { name: 'GRAPH_WRITE_PACING', value: graphWritePacing }
        // The write quota's window (3,000 writes per 150 s): adaptive pacing's time scale.
        { name: 'GRAPH_WRITE_WINDOW_SECONDS', value: '150' }
        { name: 'GRANTS_POLICY', value: grantsPolicy }
        { name: 'GRANTS_DRY_RUN', value: 'false' }
        { name: 'GRANTS_HR_RULES', value: hrRules }
        // The grant ledger (Table Storage), by identity: the app's identity with Storage Table Data Contributor.
        { name: 'GrantsLedger__tableServiceUri', value: ledgerTableServiceUri }
        { name: 'GrantsLedger__tableName', value: ledgerTableName }
        // The expiry sweep (timer trigger): every 5 minutes, removals of expired grants that did not happen.
        { name: 'GRANTS_SWEEP_SCHEDULE', value: '0 */5 * * * *' }
        // The drift sweep (timer trigger, docs/drift.md): hourly at :30; its Graph reads' own pace, per second.
        { name: 'GRANTS_DRIFT_SCHEDULE', value: '0 30 * * * *' }
        { name: 'GRAPH_READ_RATE', value: '25' }
        // Never a literal: empty, or a Key Vault reference the platform resolves with the identity.
        {
          name: 'GRANTS_WEBHOOK_SECRET'
          value: empty(webhookSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${webhookSecretUri})'
        }
        // Who asked: each producer by the queue only it may send to, its signing secret or its Entra principal.
        { name: 'GRANTS_PRODUCERS', value: producersSetting }
        // Outcome events and signed callbacks (README, "Follow a request").
        { name: 'GRANTS_OUTCOMES_TOPIC', value: outcomesTopic }
        { name: 'GRANTS_CALLBACK_QUEUE', value: callbackQueue }
        { name: 'GRANTS_CALLBACK_HOSTS', value: callbackHosts }
        // Local mode (callbacks to loopback over plain http) is never on in Azure; the app refuses it there anyway.
        { name: 'GRANTS_CALLBACK_LOOPBACK', value: 'false' }
      ]
    }
  }
}

// App Service authentication (Entra ID) in front of the HTTP API: it validates a caller's token and hands the app the
// caller's principal and app roles (X-MS-CLIENT-PRINCIPAL); the app decides each route's rights (shared/core/access.py).
// Anonymous requests reach the app too: the webhook takes requests signed with a producer's own secret, and every
// other route answers 401 without a principal.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13: this resource IS the app's App Service authentication (checkov reads every sites/config as a site)
  //checkov:skip=CKV_AZURE_63: a config child, not a site: HTTP logging is the site's (and Application Insights has the requests)
  //checkov:skip=CKV_AZURE_65: a config child, not a site
  //checkov:skip=CKV_AZURE_66: a config child, not a site
  //checkov:skip=CKV_AZURE_80: a config child, not a site (and no .NET: Python 3.11)
  //checkov:skip=CKV_AZURE_88: a config child, not a site (Flex Consumption keeps no files)
  //checkov:skip=CKV_AZURE_222: a config child, not a site: the site's own skip says why its endpoint is public
  parent: app
  name: 'authsettingsV2'
  properties: {
    platform: { enabled: !empty(apiClientId) } // off without the registration: the app then answers nobody (401)
    globalValidation: { requireAuthentication: false, unauthenticatedClientAction: 'AllowAnonymous' }
    identityProviders: {
      azureActiveDirectory: {
        enabled: !empty(apiClientId)
        registration: {
          clientId: apiClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: { allowedAudiences: [apiClientId, 'api://${apiClientId}'] }
      }
    }
    login: { tokenStore: { enabled: false } }
  }
}

output name string = app.name
