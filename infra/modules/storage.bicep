// Storage for the Functions host and the Flex deployment package: identity access only.
param name string
param location string
param tags object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: without VNet integration the Functions host reaches storage over its public endpoint (identity auth only)
  //checkov:skip=CKV_AZURE_206: holds only host leases and the deployment package, both rebuilt by azd; LRS as in the Flex samples
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'deployments'
  properties: { publicAccess: 'None' }
}

output name string = account.name
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}deployments'
