"""checkov checks for Service Bus in Bicep (checkov ships them only for Terraform)."""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


def _properties(conf: dict[str, Any]) -> dict[str, Any]:
    """The resource's ``properties`` (checkov hands a Bicep check the resource body)."""
    properties = conf.get("properties", {})
    return properties if isinstance(properties, dict) else {}


class NamespaceLocalAuthDisabled(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus namespaces accept Entra ID auth only (disableLocalAuth: true)",
            id="CKV_GRANTS_SB_1",
            categories=[CheckCategories.IAM],
            supported_resources=["Microsoft.ServiceBus/namespaces"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.PASSED if _properties(conf).get("disableLocalAuth") is True else CheckResult.FAILED


class NamespaceMinimumTls(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus namespaces require TLS 1.2",
            id="CKV_GRANTS_SB_2",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["Microsoft.ServiceBus/namespaces"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.PASSED if _properties(conf).get("minimumTlsVersion") == "1.2" else CheckResult.FAILED


class QueueMaxDeliveryCount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus queues set maxDeliveryCount (the backstop for poison messages)",
            id="CKV_GRANTS_SB_3",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["Microsoft.ServiceBus/namespaces/queues"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        count = _properties(conf).get("maxDeliveryCount")
        return CheckResult.PASSED if isinstance(count, int) and 1 <= count <= 10 else CheckResult.FAILED


class QueueDuplicateDetection(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus queues detect duplicates (producers and retry copies rely on MessageId)",
            id="CKV_GRANTS_SB_4",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["Microsoft.ServiceBus/namespaces/queues"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.PASSED if _properties(conf).get("requiresDuplicateDetection") is True else CheckResult.FAILED


check_local_auth = NamespaceLocalAuthDisabled()
check_tls = NamespaceMinimumTls()
check_delivery_count = QueueMaxDeliveryCount()
check_duplicates = QueueDuplicateDetection()
