// Service Bus: Entra ID auth only (no SAS keys, so no connection string exists to leak), TLS 1.2,
// the four queues the app reads (grants, bulk grants, HR events, callback retries), and the outcomes topic it
// publishes to (with the callbacks subscription).
param name string
param location string
param tags object
@description('The producers (main.bicep, producers): each one not sending HR events gets a queue of its own, grants-<name>.')
param producers array = []
@description('''maxDeliveryCount of every queue and subscription the app reads (one value: main.bicep's maxDeliveryCount); the
app's GRANTS_MAX_DELIVERY_COUNT is derived from what these entities get (the output maxDeliveryCount).''')
@minValue(8)
@maxValue(10)
param maxDeliveryCount int = 10

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
// - maxDeliveryCount (main.bicep's parameter, 10 by default): a message that keeps crashing the host is
//   dead-lettered, not retried forever (the app's own retries are scheduled copies with an attempt count; this is the
//   backstop); the app reads the same number as GRANTS_MAX_DELIVERY_COUNT (the output below);
// - lockDuration PT1M, renewed by the host (host.json maxAutoLockRenewalDuration);
// - duplicate detection over 10 minutes: producers may resend with the same MessageId, and retry copies
//   carry MessageId <requestId>:<attempt>, so a crash between "schedule copy" and "complete" stays harmless;
// - expired messages are dead-lettered, never silently dropped.

resource grants 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'grant-membership'
  properties: {
    maxDeliveryCount: maxDeliveryCount
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
    maxDeliveryCount: maxDeliveryCount
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
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

// Each producer's own queue (docs/deploy.md, Producers): the producer alone has Azure Service Bus Data Sender on it, so
// a message there is that producer's, whatever its body says; the app reads it with a trigger of its own.
resource producerQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [for producer in producers: if (producer.entry != 'hrEvents') {
  parent: namespace
  name: 'grants-${producer.name}'
  properties: {
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}]

// Callback retries: scheduled copies of an outcome event whose callback failed (the app's retry policy).
resource callbackRetries 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'grant-callbacks'
  properties: {
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

// Outcome events: one per terminal outcome of a grant message, published before the message is settled.
// Duplicate detection over an hour: a settlement redelivered after a crash publishes the same MessageId
// (outcome/<sha256>), and the topic keeps one. Subscribers filter on the application properties
// sourceSystem, outcome, reason, jobId, requestId, callbackUrl.
resource outcomes 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: 'grant-outcomes'
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    defaultMessageTimeToLive: 'P14D'
  }
}

// The callback trigger's subscription: events whose request named a callback URL.
resource callbacks 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = {
  parent: outcomes
  name: 'callbacks'
  properties: {
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    deadLetteringOnMessageExpiration: true
    deadLetteringOnFilterEvaluationExceptions: true
    defaultMessageTimeToLive: 'P14D'
  }
}

// Named $Default so that it replaces the subscription's implicit catch-all rule (1=1) instead of adding to it.
resource callbacksFilter 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = {
  parent: callbacks
  name: '$Default'
  properties: {
    filterType: 'SqlFilter'
    sqlFilter: { sqlExpression: 'EXISTS(callbackUrl)' }
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
output callbackQueue string = callbackRetries.name
output outcomesTopic string = outcomes.name
output callbacksSubscription string = callbacks.name
// The queues' and the subscription's maxDeliveryCount, as deployed (the least of them): GRANTS_MAX_DELIVERY_COUNT.
output maxDeliveryCount int = min(grants.properties.maxDeliveryCount, grantsBulk.properties.maxDeliveryCount, hrEvents.properties.maxDeliveryCount, callbackRetries.properties.maxDeliveryCount, callbacks.properties.maxDeliveryCount)
