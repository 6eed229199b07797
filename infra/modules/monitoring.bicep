// Log Analytics and Application Insights. Both refuse key-based access: telemetry is accepted only with an
// Entra ID token (the app's identity holds Monitoring Metrics Publisher on the component).
param name string
param location string
param tags object

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 90 // grant outcome lines are an audit trail; Application Insights tables keep 90 days at no extra charge
    // Resource-context reads are enough to query the component's data: the alert rules' identities hold
    // Monitoring Reader on Application Insights only, never a role on the whole workspace.
    features: { disableLocalAuth: true, enableLogAccessUsingOnlyResourcePermissions: true }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output appInsightsName string = appInsights.name
output appInsightsId string = appInsights.id
// With local auth disabled this only locates the component (its instrumentation key cannot ingest anything);
// the app authenticates with APPLICATIONINSIGHTS_AUTHENTICATION_STRING.
output connectionString string = appInsights.properties.ConnectionString
