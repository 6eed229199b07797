"""The local doubles and host: Graph double, token endpoint, queue and namespace, settlement server, and the
``demo``, ``run-local`` and ``serve-local`` commands built on them. Not deployed.

Importing it turns gRPC's fork handlers off for the process (``GRPC_ENABLE_FORK_SUPPORT=false`` unless set), before
anything here imports gRPC: these tools fork only to exec a command (Azurite, a test's subprocess), and with the
handlers on, a fork once gRPC has run (the local settlement server) can abort the child before exec (SIGABRT,
"epoll_wait error: Bad file descriptor"; grpc/grpc#43055), more often on a loaded machine."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
