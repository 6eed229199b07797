"""Azure Functions entry points (Python v2 programming model). Declarations only: the work is in shared/."""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared.runtime import check_configuration, process_grant_message, process_hr_event, process_webhook

check_configuration()  # a bad app setting, policy or HR rules file stops the app here, with an error naming it
app = func.FunctionApp()


@app.service_bus_queue_trigger(
    arg_name="receivedmessage",
    queue_name="%GRANTS_QUEUE%",
    connection="ServiceBusConnection",
    auto_complete_messages=False,
)
async def grant_membership(
    receivedmessage: servicebus.ServiceBusReceivedMessage,
    message_actions: servicebus.ServiceBusMessageActions,
) -> None:
    """Grant (or revoke) one membership, then complete, retry later, or dead-letter the message."""
    await process_grant_message(receivedmessage, message_actions)


@app.service_bus_queue_trigger(
    arg_name="receivedmessage",
    queue_name="%GRANTS_BULK_QUEUE%",
    connection="ServiceBusConnection",
    auto_complete_messages=False,
)
async def grant_membership_bulk(
    receivedmessage: servicebus.ServiceBusReceivedMessage,
    message_actions: servicebus.ServiceBusMessageActions,
) -> None:
    """The same for bulk jobs' rows, in the bulk lane: behind interactive grants, at Graph's Low priority."""
    await process_grant_message(receivedmessage, message_actions, lane_name="bulk")


@app.route(route="grants", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def grant_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Ticketing webhook: a signed grant request in, 202 with its requestId out (or problem details)."""
    return await process_webhook(req)


@app.service_bus_queue_trigger(
    arg_name="receivedmessage",
    queue_name="%HR_EVENTS_QUEUE%",
    connection="ServiceBusConnection",
    auto_complete_messages=False,
)
async def hr_events(
    receivedmessage: servicebus.ServiceBusReceivedMessage,
    message_actions: servicebus.ServiceBusMessageActions,
) -> None:
    """Turn one HR joiner / mover / leaver event into grant messages, then complete, abandon or dead-letter it."""
    await process_hr_event(receivedmessage, message_actions)
