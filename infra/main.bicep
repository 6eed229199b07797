// entra-grants: a Function App (Flex Consumption) that grants Entra ID memberships from Service Bus messages.
// One user-assigned managed identity; every connection identity-based; no keys, SAS or connection secrets.
// Deployed into one resource group (azd asks for it, or reads AZURE_RESOURCE_GROUP), so the deployer needs
// rights on that group only. Microsoft Graph permissions are granted afterwards by the azd postprovision hook
// (infra/scripts/grant-graph-permissions.sh); see docs/deploy.md.
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the resource names.')
param environmentName string

@description('Azure region for every resource (one where Flex Consumption is offered).')
param location string = resourceGroup().location

@description('''Microsoft Graph root the app calls, by national cloud:
https://graph.microsoft.com/v1.0 (global), https://graph.microsoft.us/v1.0 (US Government L4),
https://dod-graph.microsoft.us/v1.0 (US Government L5, DoD), https://microsoftgraph.chinacloudapi.cn/v1.0 (China, 21Vianet).''')
@allowed([
  'https://graph.microsoft.com/v1.0'
  'https://graph.microsoft.us/v1.0'
  'https://dod-graph.microsoft.us/v1.0'
  'https://microsoftgraph.chinacloudapi.cn/v1.0'
])
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('''Most instances the app scales out to. Together with host.json's maxConcurrentCalls (16) it caps
the grants in flight (instances x 16). With graphWritePacing static it also sets the per-instance Graph write rate
(20/s divided by this); with adaptive pacing (the default) the instances share Graph's 3,000 directory writes per
150 s per app and tenant whatever their number. 40 is the lowest value every Flex Consumption region accepts; some
regions accept less.''')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('''How instances share Graph's write quota (GRAPH_WRITE_PACING). adaptive: each instance finds its share
from Graph's x-ms-throttle-limit-percentage and 429s, at most the whole quota (GRAPH_WRITE_RATE 20); static: each
writes 20/s divided by maximumInstanceCount (the quota is reached only when every instance is busy).''')
@allowed(['adaptive', 'static'])
param graphWritePacing string = 'adaptive'

@description('''maxDeliveryCount of every queue and subscription the app reads, and the app's GRANTS_MAX_DELIVERY_COUNT
(derived from what those entities get): one number. At least the app's GRANTS_MAX_ATTEMPTS (8): a message retried by
its redelivery (an HR event) counts each delivery as an attempt, and the app refuses to start with fewer; at most 10,
the poison-message backstop.''')
@minValue(8)
@maxValue(10)
param maxDeliveryCount int = 10

@description('Let the app activate a directory role from its template the first time it grants it.')
param activateRoles bool = false

@description('Key Vault secret URI of the ticketing webhook secret; empty when there is none. The identity needs Key Vault Secrets User on it.')
param webhookSecretUri string = ''

@description('Grant policy file (GRANTS_POLICY), a path in the deployed package relative to its root, e.g. config/policy.json; empty: the built-in default policy.')
param grantsPolicy string = ''

@description('HR mapping-rules file (GRANTS_HR_RULES), a path in the deployed package relative to its root; empty: HR events are dead-lettered HrRulesNotConfigured.')
param hrRules string = ''

@description('''Host names the ticketing system's callbacks may go to, comma-separated, each optionally with a port, e.g.
'contoso.service-now.com,jira.contoso.com:8443' (GRANTS_CALLBACK_HOSTS for source ticketing; the app checks them at
start-up); empty: a webhook request naming a callbackUrl is refused with 400.''')
param callbackHosts string = ''

@description('''Export the app's telemetry with OpenTelemetry (the Azure Monitor distro in the Python worker): the outcome
lines' fields become customDimensions, and every Graph call a dependency. Off by default: it costs CPU per grant and
cold start well over 10 % (measured: README, Operations), and the alerts, the workbook and the runbook's queries work
either way.''')
param openTelemetry bool = false

@description('''The producers (docs/deploy.md, Producers), each {name, system, principalId, entry}: name (a-z, 0-9, inner
hyphens) is its identity; system (hr, ticketing, bulk, other) what its messages must say; principalId the object id of
its Entra identity (a managed identity or app registration), which gets Azure Service Bus Data Sender on its own queue
only and reads its own requests on the HTTP API; entry: own (a queue grants-<name>, interactive), bulk (the same, in
the bulk lane) or hrEvents (the HR events queue). Empty: the built-in four (ticketing on the webhook, hr on hr-events,
bulk on the bulk queue, other on the grants queue), whose queues take whoever you give Data Sender on them.''')
param producers array = []

@description('Client id of the Entra app registration that guards the HTTP API (App Service authentication; infra/scripts/register-api.sh creates it, with the app roles Grants.Reader and Grants.Operator). Empty: authentication is off and the API answers nobody but signed webhook requests.')
param apiClientId string = ''

@description('Email address the alerts go to; empty: no email receiver.')
param alertEmail string = ''

@description('Webhook the alerts are posted to (common alert schema), e.g. a Teams or PagerDuty endpoint; empty: none. Secure: such URLs often carry a token.')
@secure()
param alertWebhookUrl string = ''

@description('Alert "dead-letters" fires when more deliveries than this are dead-lettered for one reason within an hour.')
@minValue(0)
param alertDeadLettersPerHour int = 10

@description('Alert "stalled": minutes with grant deliveries but none landed, or with the grants queue never empty.')
@allowed([15, 30, 60])
param alertStalledMinutes int = 30

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))

// The producer registry the app reads (GRANTS_PRODUCERS), from the producers parameter: each on the queue only it may
// send to, its principal acting for it on the HTTP API; ticketing on the webhook beside them (GRANTS_WEBHOOK_SECRET).
var producerEntries = [for producer in producers: producer.entry == 'hrEvents' ? {
  name: producer.name
  system: producer.system
  hrEventsQueue: 'hr-events'
  principals: [producer.principalId]
} : {
  name: producer.name
  system: producer.system
  queue: 'grants-${producer.name}'
  lane: producer.entry == 'bulk' ? 'bulk' : 'interactive'
  principals: [producer.principalId]
}]
var webhookProducer = { name: 'ticketing', system: 'ticketing', secretSetting: 'GRANTS_WEBHOOK_SECRET' }
var producersSetting = empty(producers) ? '' : string({ producers: concat([webhookProducer], producerEntries) })
var producerSenders = [for producer in producers: {
  principalId: producer.principalId
  queue: producer.entry == 'hrEvents' ? 'hr-events' : 'grants-${producer.name}'
}]
var tags = { 'azd-env-name': environmentName }

// Graph allows 20 directory writes per second per app and tenant. Adaptive pacing: every instance may write up to
// all of it (GRAPH_WRITE_RATE is a ceiling) and finds its share from Graph's signals. Static: split it over the
// instances, in thousandths, since GRAPH_WRITE_RATE takes a decimal and Bicep divides integers (40: "0.500").
var graphWriteRateMilli = 20000 / maximumInstanceCount
var staticWriteRate = '${graphWriteRateMilli / 1000}.${padLeft(string(graphWriteRateMilli % 1000), 3, '0')}'
var graphWriteRate = (graphWritePacing == 'static') ? staticWriteRate : '20'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: { name: 'id-grants-${token}', location: location, tags: tags }
}

module servicebus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    name: 'sb-grants-${token}'
    location: location
    tags: tags
    producers: producers
    maxDeliveryCount: maxDeliveryCount
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: { name: 'stgrants${token}', location: location, tags: tags }
}

module ledger 'modules/ledger.bicep' = {
  name: 'ledger'
  params: { name: 'stledger${token}', location: location, tags: tags }
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
    grantsQueue: servicebus.outputs.grantsQueue
    grantsBulkQueue: servicebus.outputs.grantsBulkQueue
    hrEventsQueue: servicebus.outputs.hrEventsQueue
    outcomesTopic: servicebus.outputs.outcomesTopic
    callbackQueue: servicebus.outputs.callbackQueue
    maxDeliveryCount: servicebus.outputs.maxDeliveryCount
    callbackHosts: empty(callbackHosts) ? '' : string({ ticketing: split(replace(callbackHosts, ' ', ''), ',') })
    graphBaseUrl: graphBaseUrl
    maximumInstanceCount: maximumInstanceCount
    graphWriteRate: graphWriteRate
    graphWritePacing: graphWritePacing
    activateRoles: activateRoles
    webhookSecretUri: webhookSecretUri
    grantsPolicy: grantsPolicy
    hrRules: hrRules
    ledgerTableServiceUri: ledger.outputs.tableServiceUri
    ledgerTableName: ledger.outputs.tableName
    openTelemetry: openTelemetry
    producersSetting: producersSetting
    apiClientId: apiClientId
  }
  // The identity's roles exist before the host first starts, so it does not crash-loop on storage or Service Bus.
  dependsOn: [rbac]
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    serviceBusNamespaceName: servicebus.outputs.name
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    ledgerAccountName: ledger.outputs.name
    ledgerTableName: ledger.outputs.tableName
    // The rules' identities exist once the rules do, so this module (and the app, which waits for it) waits for them.
    alertRulePrincipalIds: alerts.outputs.logAlertPrincipalIds
    producerSenders: producerSenders
  }
}

// Alerts (docs/runbook.md) and the operations workbook, over Application Insights and the Service Bus metrics.
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    name: 'grants-${token}'
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusNamespaceId: servicebus.outputs.id
    grantsQueue: servicebus.outputs.grantsQueue
    grantsBulkQueue: servicebus.outputs.grantsBulkQueue
    hrEventsQueue: servicebus.outputs.hrEventsQueue
    alertEmail: alertEmail
    alertWebhookUrl: alertWebhookUrl
    deadLettersPerHour: alertDeadLettersPerHour
    stalledMinutes: alertStalledMinutes
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusNamespaceId: servicebus.outputs.id
  }
}

// azd stores these in the environment (.azure/<env>/.env); the postprovision hook reads the identity's IDs.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output MANAGED_IDENTITY_NAME string = identity.outputs.name
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
output SERVICE_BUS_NAMESPACE string = servicebus.outputs.fullyQualifiedNamespace
// The postdeploy smoke check (grants smoke) reads the identity's roles on the namespace and the outcome lines here.
output SERVICE_BUS_NAMESPACE_ID string = servicebus.outputs.id
output APPLICATIONINSIGHTS_ID string = monitoring.outputs.appInsightsId
output GRANTS_QUEUE string = servicebus.outputs.grantsQueue
output GRANTS_BULK_QUEUE string = servicebus.outputs.grantsBulkQueue
output HR_EVENTS_QUEUE string = servicebus.outputs.hrEventsQueue
output GRANTS_OUTCOMES_TOPIC string = servicebus.outputs.outcomesTopic
output GRANTS_CALLBACK_QUEUE string = servicebus.outputs.callbackQueue
output GRAPH_BASE_URL string = graphBaseUrl
output GRAPH_WRITE_RATE string = graphWriteRate
output GRAPH_WRITE_PACING string = graphWritePacing
output GRANTS_PRODUCERS string = producersSetting
