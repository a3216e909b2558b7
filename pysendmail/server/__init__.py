"""The sidecar, ``pysendmail serve``: SMTP in, the queue, the runner, health and metrics.

For containers: one long-running process that accepts mail over SMTP from
the other containers of a pod (TCP addresses and a unix socket), commits
each message to the queue through the same intake as ``sendmail`` before it
answers 250, and delivers the queue with the runner in the same process,
woken by its own commits and by those of ``sendmail`` processes sharing the
queue volume. ``GET /healthz`` and ``GET /metrics`` answer on an address of
their own. Configured by ``[server]`` or ``PYSENDMAIL_SERVER__…`` alone.

The modules: ``listener`` (the aiosmtpd protocol and handler, also used by
``sendmail -bs``), ``policy`` (who may send what), ``passwords`` (AUTH users'
hashes), ``replies`` (reply texts), ``submit`` (the commit in a thread),
``committer`` (the commit processes, seen from the listener) and
``commitchild`` (such a process), ``delivery`` (the delivery processes),
``frames`` (what travels between serve and them), ``metrics`` (counters,
gauges, the Prometheus text, the logger that counts), ``http`` (the probe
server), ``stdio`` (an SMTP session on stdin/stdout), ``main`` (the process,
signals).

What this package must never do: answer 250 to a message that is not
durable; relay for a client outside ``allowed_networks``; offer AUTH without
TLS; write anywhere but the queue directory and the unix socket's path.

SECURITY: it listens on the network; every byte a client sends is hostile.
See each module's notes. Only ``sendmail -bs`` and ``pysendmail serve``
import it: the ``sendmail`` hot path never does.

Import the module you need (``pysendmail.server.main.serve_main``): this
package's ``__init__`` imports nothing, so ``-bs`` does not load the runner.
"""
