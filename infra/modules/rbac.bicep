// Azure role assignments: for the app's identity, exactly the data-plane roles it uses, each on the one resource
// it needs; for the log search alert rules' identities, read access to the telemetry they query. Never Azure
// Service Bus Data Owner (090c5cfd-751d-490a-894a-3ce6f1109419): that could create, change and delete queues.
// Each assignment is named guid(scope id, principal, role definition id), so re-running `azd provision`
// finds the same assignment instead of failing with RoleAssignmentExists.
param principalId string
param serviceBusNamespaceName string
param storageAccountName string
param appInsightsName string
param ledgerAccountName string
param ledgerTableName string
@description('Principal IDs of the log search alert rules\' system-assigned identities (alerts.bicep).')
param alertRulePrincipalIds array
@description('Each producer\'s principal and its own queue ({principalId, queue}): Data Sender on that queue alone.')
param producerSenders array = []

// Built-in role definitions (IDs are the same in every tenant and cloud).
// The trigger receives, completes, abandons and dead-letters messages.
var serviceBusDataReceiver = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0')
// The app schedules retry copies, and the removal of a time-bound grant, on its own queue.
var serviceBusDataSender = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39')
// Target-based scaling reads queue lengths (Microsoft.ServiceBus/namespaces/*/read); Reader on the namespace
// gives exactly that read, where the alternative people reach for is Data Owner.
var reader = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'acdd72a7-3385-48ef-bd42-f606fba81ae7')
// Host storage and the Flex deployment container. Microsoft's azd Flex Consumption Python quickstarts grant
// only this storage role when, as here, no Durable Functions, blob trigger or MCP trigger is used (they add
// Queue/Table Data Contributor only for those); the Functions host docs name Owner, not Contributor, for
// AzureWebJobsStorage (it manages its own containers and blob leases). Scoped to this account, which holds
// nothing but host state and the package.
var storageBlobDataOwner = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
// The grant ledger: read and write entities of its one table (scoped to that table, not the account).
var storageTableDataContributor = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
// Telemetry ingestion with Application Insights local auth disabled.
var monitoringMetricsPublisher = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb')
// A log search alert rule runs its query as its identity: Monitoring Reader on the component it queries lets it
// read that component's telemetry (resource-context, monitoring.bicep) and change nothing.
var monitoringReader = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '43d0d8ad-25c7-4714-9337-8ba259a9fe05')

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource ledgerAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: ledgerAccountName
}

resource ledgerTables 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: ledgerAccount
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: ledgerTables
  name: ledgerTableName
}

resource serviceBusReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: namespace
  name: guid(namespace.id, principalId, serviceBusDataReceiver)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: serviceBusDataReceiver
  }
}

resource serviceBusSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: namespace
  name: guid(namespace.id, principalId, serviceBusDataSender)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: serviceBusDataSender
  }
}

resource serviceBusReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: namespace
  name: guid(namespace.id, principalId, reader)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: reader
  }
}

resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, principalId, storageBlobDataOwner)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: storageBlobDataOwner
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: monitoringMetricsPublisher
  }
}

resource ledgerContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: ledgerTable
  name: guid(ledgerTable.id, principalId, storageTableDataContributor)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: storageTableDataContributor
  }
}

resource alertRuleReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for alertRulePrincipalId in alertRulePrincipalIds: {
  scope: appInsights
  name: guid(appInsights.id, alertRulePrincipalId, monitoringReader)
  properties: {
    principalId: alertRulePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: monitoringReader
  }
}]

// A producer may send to its own queue and to nothing else: Azure Service Bus Data Sender scoped to that one queue
// (never the namespace), so a message on it is that producer's (docs/trust.md, Who asked).
resource producerQueues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = [for sender in producerSenders: {
  parent: namespace
  name: sender.queue
}]

resource producerSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (sender, index) in producerSenders: {
  scope: producerQueues[index]
  name: guid(producerQueues[index].id, sender.principalId, serviceBusDataSender)
  properties: {
    principalId: sender.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: serviceBusDataSender
  }
}]
