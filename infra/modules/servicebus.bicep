// Service Bus: Entra ID auth only (no SAS keys, so no connection string exists to leak), TLS 1.2,
// and the three queues the app reads.
param name string
param location string
param tags object

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// Every queue carries the same safety settings:
// - maxDeliveryCount 10: a message that keeps crashing the host is dead-lettered, not retried forever
//   (the app's own retries are scheduled copies with an attempt count; this is the backstop);
// - lockDuration PT1M, renewed by the host (host.json maxAutoLockRenewalDuration);
// - duplicate detection over 10 minutes: producers may resend with the same MessageId, and retry copies
//   carry MessageId <requestId>:<attempt>, so a crash between "schedule copy" and "complete" stays harmless;
// - expired messages are dead-lettered, never silently dropped.

resource grants 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'grant-membership'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

// Bulk jobs' rows (`grants submit`): the same messages as the grants queue, on their own queue and trigger, so
// a 10,000-row job never sits in front of a new hire's grant (docs/deploy.md, Priority lanes).
resource grantsBulk 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'grant-membership-bulk'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

resource hrEvents 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'hr-events'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

output name string = namespace.name
output id string = namespace.id
// <name>.servicebus.windows.net in the global cloud, the national suffix elsewhere (taken from the endpoint,
// https://<host>:443/, rather than hard-coded).
output fullyQualifiedNamespace string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')
output grantsQueue string = grants.name
output grantsBulkQueue string = grantsBulk.name
output hrEventsQueue string = hrEvents.name
