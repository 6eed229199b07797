"""Azure Functions entry points (Python v2 programming model). Declarations only: the work is in shared/."""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared.core.messaging import Lane
from shared.runtime import (
    check_configuration,
    configure_telemetry,
    process_callback,
    process_drift_confirm,
    process_drift_report,
    process_drift_sweep,
    process_expiry_sweep,
    process_grant_message,
    process_history,
    process_hr_event,
    process_hr_event_status,
    process_job_status,
    process_status,
    process_webhook,
    producer_queues,
)

check_configuration()  # a bad app setting, policy or HR rules file stops the app here, with an error naming it
configure_telemetry()  # outcome fields as customDimensions, when the worker exports with OpenTelemetry
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
    await process_grant_message(receivedmessage, message_actions, lane=Lane.BULK)


def _producer_queue(name: str, queue: str, hr_events: bool) -> None:
    """Declare the trigger of one producer's own queue (the producer registry, GRANTS_PRODUCERS): its grant messages,
    or its HR events, are that producer's, whatever they say."""

    async def trigger(
        receivedmessage: servicebus.ServiceBusReceivedMessage,
        message_actions: servicebus.ServiceBusMessageActions,
    ) -> None:
        if hr_events:
            await process_hr_event(receivedmessage, message_actions, queue=queue)
        else:
            await process_grant_message(receivedmessage, message_actions, queue=queue)

    trigger.__name__ = trigger.__qualname__ = name
    declare = app.service_bus_queue_trigger(
        arg_name="receivedmessage", queue_name=queue, connection="ServiceBusConnection", auto_complete_messages=False
    )
    app.function_name(name=name)(declare(trigger))


for _name, _queue, _hr_events in producer_queues():
    _producer_queue(_name, _queue, _hr_events)


# The HTTP routes are anonymous to the Functions host: App Service authentication (Entra ID) establishes the caller
# and the app decides its rights (shared/core/access.py); the webhook also takes requests signed with a producer's
# own secret. No route answers a caller it cannot tell apart.
@app.route(route="grants", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def grant_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Webhook: a producer's grant request (signed, or from a principal acting for it) in, 202 out (or problem
    details)."""
    return await process_webhook(req)


@app.route(route="grants/{requestId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def grant_status(req: func.HttpRequest) -> func.HttpResponse:
    """A request's status from the grant ledger: 200 JSON, 404 when unknown, 400 for an id the contract refuses."""
    return await process_status(req)


@app.route(route="jobs/{jobId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def job_status(req: func.HttpRequest) -> func.HttpResponse:
    """A bulk job's progress, totals by status and failed rows, from the grant ledger."""
    return await process_job_status(req)


@app.route(route="hr-events/{eventId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def hr_event_status(req: func.HttpRequest) -> func.HttpResponse:
    """An HR event's grants: their progress, totals by status and failed rows, from the grant ledger."""
    return await process_hr_event_status(req)


@app.route(route="history", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def grant_history(req: func.HttpRequest) -> func.HttpResponse:
    """Every request that named a member (?member=) or a target (?target=), newest first (&since= to narrow)."""
    return await process_history(req)


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


@app.timer_trigger(arg_name="timer", schedule="%GRANTS_SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def expiry_sweep(timer: func.TimerRequest) -> None:
    """Send the removal of every time-bound grant past its expiry whose removal has not happened (the ledger's
    pending removals): an expiry cannot fail open."""
    await process_expiry_sweep()


@app.timer_trigger(arg_name="timer", schedule="%GRANTS_DRIFT_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def drift_sweep(timer: func.TimerRequest) -> None:
    """Check every target against the ledger (docs/drift.md): report drift, repair it where the policy says, hold
    mass removals until a confirm."""
    await process_drift_sweep()


@app.route(route="drift", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def drift_report(req: func.HttpRequest) -> func.HttpResponse:
    """The drift of every target (?target= for one), read now: findings, planned repairs, held removals."""
    return await process_drift_report(req)


@app.route(route="drift/{target}/confirm", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def drift_confirm(req: func.HttpRequest) -> func.HttpResponse:
    """Release, once, the removals the blast-radius guard holds for a target (body: {"digest": …}, optional)."""
    return await process_drift_confirm(req)


@app.service_bus_topic_trigger(
    arg_name="receivedmessage",
    topic_name="%GRANTS_OUTCOMES_TOPIC%",
    subscription_name="callbacks",
    connection="ServiceBusConnection",
    auto_complete_messages=False,
)
async def grant_callbacks(
    receivedmessage: servicebus.ServiceBusReceivedMessage,
    message_actions: servicebus.ServiceBusMessageActions,
) -> None:
    """POST one outcome event to the callback URL its request named, signed; retry later or dead-letter."""
    await process_callback(receivedmessage, message_actions)


@app.service_bus_queue_trigger(
    arg_name="receivedmessage",
    queue_name="%GRANTS_CALLBACK_QUEUE%",
    connection="ServiceBusConnection",
    auto_complete_messages=False,
)
async def grant_callback_retries(
    receivedmessage: servicebus.ServiceBusReceivedMessage,
    message_actions: servicebus.ServiceBusMessageActions,
) -> None:
    """A later attempt of a callback (a scheduled copy of its outcome event): the same work as grant_callbacks."""
    await process_callback(receivedmessage, message_actions)
