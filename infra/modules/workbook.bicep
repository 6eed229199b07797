// The operations workbook (Azure portal: Monitor > Workbooks, or the Application Insights component > Workbooks):
// grants per hour, dead-letter reasons, latency, throttling and the write rate against Graph's quota, queue depths
// pending expiries and drift. Each log tile's query is a file in infra/queries/, loaded here, with outcomes.kql (the
// shared preamble) in front when it reads the outcome lines. The queues' tiles read Service Bus metrics.
param location string
param tags object
param appInsightsId string
param serviceBusNamespaceId string

var outcomes = loadTextContent('../queries/outcomes.kql')
var day = 86400000 // milliseconds

// What every log tile shares: Application Insights as the source, the workbook's time range.
var logTile = {
  version: 'KqlItem/1.0'
  size: 0
  queryType: 0
  resourceType: 'microsoft.insights/components'
  timeContextFromParameter: 'TimeRange'
  timeContext: { durationMs: day }
}

// Service Bus metrics for both queues, one series per queue.
var queueTile = {
  version: 'MetricsItem/2.0'
  size: 0
  chartType: 2
  resourceType: 'microsoft.servicebus/namespaces'
  metricScope: 0
  resourceIds: [serviceBusNamespaceId]
  timeContextFromParameter: 'TimeRange'
  timeContext: { durationMs: day }
}

var content = {
  version: 'Notebook/1.0'
  fallbackResourceIds: [appInsightsId]
  items: [
    {
      type: 1
      name: 'about'
      content: {
        json: '## entra-grants operations\nQueries: infra/queries/ (one file each). What each alert means and how to fix it: docs/runbook.md.'
      }
    }
    {
      type: 9
      name: 'parameters'
      content: {
        version: 'KqlParameterItem/1.0'
        parameters: [
          {
            id: 'time-range'
            version: 'KqlParameterItem/1.0'
            name: 'TimeRange'
            label: 'Time range'
            type: 4
            isRequired: true
            value: { durationMs: day }
            typeSettings: {
              selectableValues: [
                { durationMs: 3600000 }
                { durationMs: 14400000 }
                { durationMs: day }
                { durationMs: 259200000 }
                { durationMs: 604800000 }
                { durationMs: 2592000000 }
              ]
            }
          }
        ]
      }
    }
    {
      type: 3
      name: 'grants-per-hour'
      content: union(logTile, {
        title: 'Grants per hour by outcome and source'
        query: concat(outcomes, loadTextContent('../queries/grants-per-hour.kql'))
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'dead-letter-reasons'
      content: union(logTile, {
        title: 'Top dead-letter reasons'
        query: concat(outcomes, loadTextContent('../queries/dead-letters-by-reason.kql'))
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'latency'
      content: union(logTile, {
        title: 'First attempt to settled, seconds (p50, p95)'
        query: concat(outcomes, loadTextContent('../queries/settle-latency.kql'))
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'throttling'
      content: union(logTile, {
        title: 'Throttled share (alert above 5 %)'
        query: concat(outcomes, loadTextContent('../queries/throttled-share.kql'))
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'write-rate'
      content: union(logTile, {
        title: 'Graph writes per second against the quota (20/s per app and tenant)'
        query: concat(outcomes, loadTextContent('../queries/write-rate.kql'))
        visualization: 'timechart'
      })
    }
    {
      type: 10
      name: 'dead-letter-depth'
      content: union(queueTile, {
        chartId: 'dead-letter-depth'
        title: 'Dead letters per queue (max)'
        metrics: [
          {
            namespace: 'microsoft.servicebus/namespaces'
            metric: 'microsoft.servicebus/namespaces--DeadletteredMessages'
            aggregation: 3
            splitBy: ['EntityName']
          }
        ]
      })
    }
    {
      type: 10
      name: 'active-messages'
      content: union(queueTile, {
        chartId: 'active-messages'
        title: 'Active messages per queue (max)'
        metrics: [
          {
            namespace: 'microsoft.servicebus/namespaces'
            metric: 'microsoft.servicebus/namespaces--ActiveMessages'
            aggregation: 3
            splitBy: ['EntityName']
          }
        ]
      })
    }
    {
      type: 3
      name: 'pending-expiries'
      content: union(logTile, {
        title: 'Pending expiries: removals overdue by more than 15 minutes'
        query: concat(outcomes, loadTextContent('../queries/pending-expiries.kql'))
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'drift'
      content: union(logTile, {
        title: 'Drift: targets whose latest sweep found drift, holds removals, or could not read them'
        query: loadTextContent('../queries/drift.kql')
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'function-failures'
      content: union(logTile, {
        title: 'Function failures and exceptions'
        query: loadTextContent('../queries/function-failures.kql')
        visualization: 'table'
      })
    }
  ]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(appInsightsId, 'entra-grants-operations')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'entra-grants operations'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: string(content)
  }
}
