"""The Dramatiq worker of agentrun: ``dramatiq agentrun_worker.actors``.

``actors`` declares the actor on the broker of ``runtime``; ``execution`` is the lifecycle of
one run (lease, stop, status, agent loop, final state); ``agent`` is the loop itself and
``providers`` the model back-ends.
"""
