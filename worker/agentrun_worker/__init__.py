"""The Dramatiq worker of agentrun: ``dramatiq agentrun_worker.actors``.

``actors`` declares the actor on the broker of ``runtime``; ``execution`` drives one run
through ``admission``, ``keeping`` (lease and heartbeat), ``inputs``, ``history`` and
``runners`` (the agent loop or a workflow) to its final state; ``agent`` is the loop itself,
``providers`` the model back-ends and ``tools`` what the model may call. ``leases`` and
``stopping`` are the run's Redis coordination; ``middleware`` and ``shutdown`` the Dramatiq
middleware (closing clients, graceful shutdown); ``config`` the worker-only settings.
"""
