"""checkov checks for Service Bus in Bicep (checkov ships Service Bus checks for Terraform only).

`infra/check.sh` loads them with ``--external-checks-dir infra/checks``; `infra/tests` proves each one fails
on a namespace or queue that lacks its setting. A value checkov cannot resolve (a parameter) fails too:
these settings are meant to be literals, but for ``maxDeliveryCount``, which may be servicebus.bicep's one
``maxDeliveryCount`` parameter (the app's GRANTS_MAX_DELIVERY_COUNT derives from it; infra/tests checks its bounds
and every entity's use of it).
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

NAMESPACES = "Microsoft.ServiceBus/namespaces"
QUEUES = "Microsoft.ServiceBus/namespaces/queues"
TOPICS = "Microsoft.ServiceBus/namespaces/topics"
SUBSCRIPTIONS = "Microsoft.ServiceBus/namespaces/topics/subscriptions"


def _properties(conf: dict[str, Any]) -> dict[str, Any]:
    """The resource's ``properties`` (checkov hands a Bicep check the resource body; a resource declared in a loop,
    ``[for … : {…}]``, has it one level down: every resource the loop makes gets that body)."""
    if isinstance(conf.get("loop_type"), dict) and isinstance(conf.get("config"), dict):
        conf = conf["config"]
    properties = conf.get("properties")
    return properties if isinstance(properties, dict) else {}


def _result(passed: bool) -> CheckResult:
    return CheckResult.PASSED if passed else CheckResult.FAILED


class NamespaceLocalAuthDisabled(BaseResourceCheck):
    """SAS keys off: only Entra ID tokens (and so only role assignments) open the namespace."""

    def __init__(self) -> None:
        super().__init__(
            name="Service Bus namespaces accept Entra ID auth only (disableLocalAuth: true)",
            id="CKV_GRANTS_SB_1",
            categories=[CheckCategories.IAM],
            supported_resources=[NAMESPACES],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return _result(_properties(conf).get("disableLocalAuth") is True)


class NamespaceMinimumTls(BaseResourceCheck):
    """Clients must speak TLS 1.2 or later."""

    def __init__(self) -> None:
        super().__init__(
            name="Service Bus namespaces require TLS 1.2 or later (minimumTlsVersion)",
            id="CKV_GRANTS_SB_2",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=[NAMESPACES],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return _result(_properties(conf).get("minimumTlsVersion") in ("1.2", "1.3"))


#: The one parameter a queue's or subscription's maxDeliveryCount may name (servicebus.bicep; bounded 8..10 there).
DELIVERY_COUNT_PARAMETER = "maxDeliveryCount"


class QueueMaxDeliveryCount(BaseResourceCheck):
    """A poison message is dead-lettered after a bounded number of deliveries (explicit, at most 10, or the module's
    one bounded `DELIVERY_COUNT_PARAMETER`): queues and topic subscriptions, the entities a receiver settles."""

    def __init__(self) -> None:
        super().__init__(
            name="Service Bus queues and subscriptions set maxDeliveryCount from 1 to 10, or to the one bounded "
            "parameter (the poison-message backstop)",
            id="CKV_GRANTS_SB_3",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=[QUEUES, SUBSCRIPTIONS],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        count = _properties(conf).get("maxDeliveryCount")
        if count == DELIVERY_COUNT_PARAMETER:
            return CheckResult.PASSED
        return _result(isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 10)


class QueueDuplicateDetection(BaseResourceCheck):
    """Duplicate detection on, with its window set: resent messages, retry copies and republished outcome events
    dedupe by MessageId (queues and topics, the entities a sender sends to)."""

    def __init__(self) -> None:
        super().__init__(
            name="Service Bus queues and topics detect duplicates (requiresDuplicateDetection and its history window)",
            id="CKV_GRANTS_SB_4",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=[QUEUES, TOPICS],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        properties = _properties(conf)
        return _result(
            properties.get("requiresDuplicateDetection") is True
            and bool(properties.get("duplicateDetectionHistoryTimeWindow"))
        )


check_local_auth = NamespaceLocalAuthDisabled()
check_tls = NamespaceMinimumTls()
check_delivery_count = QueueMaxDeliveryCount()
check_duplicates = QueueDuplicateDetection()
