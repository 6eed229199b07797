// The grant ledger: one table (request ids, and per member and target the newest intent, its lease and what was
// applied) in a storage account of its own. Unlike host storage it is state that cannot be recreated: losing it
// forgets which intent is newest and which expiries are still pending, so it is zone-redundant and kept apart.
// Reached by the app's identity only (Storage Table Data Contributor on the table; shared keys are off).
param name string
param location string
param tags object

@description('The ledger table; the app reads its name from GrantsLedger__tableName.')
param tableName string = 'grantledger'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_206: zone-redundant (ZRS, three copies across the region's zones); checkov counts only geo SKUs, which need a paired region that not every Flex Consumption region has
  //checkov:skip=CKV_AZURE_35: no VNet here, so the Flex app reaches storage over its public endpoint; shared keys are off and every caller needs an Entra ID token plus the table's data role
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource table 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tables
  name: tableName
}

output name string = account.name
output tableName string = table.name
output tableServiceUri string = account.properties.primaryEndpoints.table
