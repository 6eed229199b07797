"""The local doubles and host: Graph double, token endpoint, queue and namespace, settlement server, and the
``demo``, ``run-local`` and ``serve-local`` commands built on them. Not deployed."""
