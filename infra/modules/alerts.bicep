// Alerts: one action group (email and/or webhook; either may be empty) and the rules docs/runbook.md explains,
// one section each. Every log query is a file in infra/queries/, loaded here; a query over the outcome lines gets
// outcomes.kql (the shared preamble) in front of it. Log search rules run their query as their own system-assigned
// identity, which rbac.bicep makes Monitoring Reader on the Application Insights component they query, and nothing
// else: the app's identity gains no read access to its own audit trail.
param name string
param location string
param tags object
param appInsightsId string
param serviceBusNamespaceId string
param grantsQueue string
param grantsBulkQueue string
param hrEventsQueue string
param alertEmail string
@secure()
param alertWebhookUrl string
param deadLettersPerHour int
param stalledMinutes int

var outcomes = loadTextContent('../queries/outcomes.kql')
// Both kinds of rule accept 15, 30 and 60 minutes as a window; 60 is written PT1H.
var stalledWindow = (stalledMinutes == 60) ? 'PT1H' : 'PT${stalledMinutes}M'
var runbook = 'Runbook: docs/runbook.md'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${name}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'grants'
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      { name: 'email', emailAddress: alertEmail, useCommonAlertSchema: true }
    ]
    webhookReceivers: empty(alertWebhookUrl) ? [] : [
      { name: 'webhook', serviceUri: alertWebhookUrl, useCommonAlertSchema: true }
    ]
  }
}

// Service Bus metrics, one time series per queue (the EntityName dimension). Minimum over the window: the
// condition held for the whole window, not at one sample.
resource deadLetterDepth 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-${name}-dead-letter-depth'
  location: 'global'
  tags: tags
  properties: {
    description: 'A queue has held dead letters for 5 minutes. ${runbook}, "Dead letters in a queue".'
    severity: 2
    enabled: true
    scopes: [serviceBusNamespaceId]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [{ name: 'EntityName', operator: 'Include', values: [grantsQueue, grantsBulkQueue, hrEventsQueue] }]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Minimum'
        }
      ]
    }
    autoMitigate: true
    actions: [{ actionGroupId: actionGroup.id }]
  }
}

// The half of "stalled" that logs cannot see: Service Bus does not export ActiveMessages to Log Analytics, and an
// app that is not running writes no lines. The log rule "stalled" below is the other half.
resource grantsBacklog 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-${name}-grants-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'The grants queue has not been empty for ${stalledMinutes} minutes. ${runbook}, "Stalled".'
    severity: 1
    enabled: true
    scopes: [serviceBusNamespaceId]
    evaluationFrequency: 'PT5M'
    windowSize: stalledWindow
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'waiting'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'ActiveMessages'
          dimensions: [{ name: 'EntityName', operator: 'Include', values: [grantsQueue] }]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Minimum'
        }
      ]
    }
    autoMitigate: true
    actions: [{ actionGroupId: actionGroup.id }]
  }
}

// Log search rules over Application Insights. `criterion` is the rule's one condition as the API takes it.
var logAlerts = [
  {
    name: 'dead-letters'
    description: 'More than ${deadLettersPerHour} deliveries dead-lettered for one reason within an hour. ${runbook}, "Dead letters by reason".'
    severity: 1
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    criterion: {
      query: concat(outcomes, loadTextContent('../queries/dead-letters-by-reason.kql'))
      timeAggregation: 'Total'
      metricMeasureColumn: 'deadLettered'
      dimensions: [{ name: 'reason', operator: 'Include', values: ['*'] }]
      operator: 'GreaterThan'
      threshold: deadLettersPerHour
    }
  }
  {
    name: 'throttling'
    description: 'Graph throttled (429) more than 5 % of grant deliveries over 10 minutes. ${runbook}, "Throttling".'
    severity: 2
    evaluationFrequency: 'PT5M'
    windowSize: 'PT10M'
    criterion: {
      query: concat(outcomes, loadTextContent('../queries/throttled-share.kql'))
      timeAggregation: 'Maximum'
      metricMeasureColumn: 'throttledPercent'
      dimensions: [{ name: 'signal', operator: 'Include', values: ['*'] }]
      operator: 'GreaterThan'
      threshold: 5
    }
  }
  {
    name: 'stalled'
    description: 'The app handled grant deliveries for ${stalledMinutes} minutes and none landed. ${runbook}, "Stalled".'
    severity: 1
    evaluationFrequency: 'PT5M'
    windowSize: stalledWindow
    criterion: {
      query: concat(outcomes, loadTextContent('../queries/stalled.kql'))
      timeAggregation: 'Total'
      metricMeasureColumn: 'landed'
      operator: 'LessThan'
      threshold: 1
    }
  }
  {
    name: 'pending-expiries'
    description: 'A time-bound membership outlived its expiry by 15 minutes: its removal failed or is still retrying. ${runbook}, "Pending expiries".'
    severity: 1
    evaluationFrequency: 'PT15M'
    windowSize: 'P1D'
    criterion: {
      query: concat(outcomes, loadTextContent('../queries/pending-expiries.kql'))
      timeAggregation: 'Count'
      operator: 'GreaterThan'
      threshold: 0
    }
  }
  {
    name: 'drift'
    description: 'A drift sweep found a target whose members differ from the ledger (missing, lingering or unmanaged), or could not read one. ${runbook}, "Drift".'
    severity: 2
    evaluationFrequency: 'PT15M'
    windowSize: 'P1D'
    criterion: {
      query: loadTextContent('../queries/drift.kql')
      timeAggregation: 'Count'
      dimensions: [{ name: 'state', operator: 'Include', values: ['drifted', 'failed'] }]
      operator: 'GreaterThan'
      threshold: 0
    }
  }
  {
    name: 'drift-held'
    description: 'The blast-radius guard holds a mass removal from a target until an operator confirms it. ${runbook}, "Drift: removals held".'
    severity: 1
    evaluationFrequency: 'PT15M'
    windowSize: 'P1D'
    criterion: {
      query: loadTextContent('../queries/drift.kql')
      timeAggregation: 'Count'
      dimensions: [{ name: 'state', operator: 'Include', values: ['held'] }]
      operator: 'GreaterThan'
      threshold: 0
    }
  }
  {
    name: 'function-failures'
    description: 'A function invocation failed, or the app raised an exception. ${runbook}, "Function failures".'
    severity: 2
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criterion: {
      query: loadTextContent('../queries/function-failures.kql')
      timeAggregation: 'Total'
      metricMeasureColumn: 'failures'
      dimensions: [{ name: 'problem', operator: 'Include', values: ['*'] }]
      operator: 'GreaterThan'
      threshold: 0
    }
  }
]

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in logAlerts: {
  name: 'alert-${name}-${rule.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: { type: 'SystemAssigned' }
  properties: {
    displayName: 'entra-grants: ${rule.name}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [appInsightsId]
    evaluationFrequency: rule.evaluationFrequency
    windowSize: rule.windowSize
    criteria: { allOf: [rule.criterion] }
    autoMitigate: true
    actions: { actionGroups: [actionGroup.id] }
  }
}]

// rbac.bicep assigns each of these Monitoring Reader on the Application Insights component.
output logAlertPrincipalIds array = [for (rule, i) in logAlerts: logAlertRules[i].identity.principalId]
