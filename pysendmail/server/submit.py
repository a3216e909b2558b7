"""The listener's last step: one SMTP transaction becomes one committed queue file.

``QueueSubmitter`` is the ``submit`` of ``pysendmail serve``. It runs in a
worker thread (the listener's pool): the intake reads the spooled data and
writes the queue file (``Queue.begin``: ``tmp/``, O_EXCL), then ``commit``
fsyncs it, links it into ``queue/``, fsyncs the folder and pokes the trigger,
so the runner in the same process (or any runner watching the queue) starts
delivering at once. Only then does the client hear ``250``.

Replies: ``250 2.0.0 Ok: queued as ID``; ``451 4.3.0`` when the queue cannot
take the message now (disk full, the queue missing or unwritable, an I/O
error, anything unexpected); ``554 5.6.0`` when the message itself is refused
(a NUL in the header block, a header block over 1 MiB, an envelope too large).
In every case but 250 nothing is left in ``tmp/`` (``Pending`` removes it).

What it must never do: return 250 before ``commit`` returned.

SECURITY: the data and the envelope are hostile; the intake checks them.
Error texts that quote the message go through ``reply_text``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pysendmail.server.replies import failure

if TYPE_CHECKING:
    from pysendmail.log import Logger
    from pysendmail.queue.spool import Queue
    from pysendmail.server.listener import Submission
    from pysendmail.server.metrics import Metrics
    from pysendmail.server.policy import Policy


class QueueSubmitter:
    """Commit a submission to ``queue`` with the intake options of the current policy."""

    def __init__(
        self,
        queue: Queue,
        policy: Callable[[], Policy],
        logger: Logger,
        metrics: Metrics | None = None,
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.log = logger
        self.metrics = metrics

    def __call__(self, submission: Submission) -> str:
        from pysendmail.message.intake import make_queue_id, receive

        policy = self.policy()
        queue_id = make_queue_id()
        try:
            options = policy.intake_options(
                submission.sender, submission.recipients, submission.body_type
            )
            options.queue_id = queue_id
            options.trace = submission.trace
            src = submission.spool.reader()
            with self.queue.begin(queue_id) as pending:
                envelope = receive(src, pending.file, options)
                pending.commit()
        except Exception as exc:
            reply, text, level = failure(exc)
            if text is None:
                raise
            self.log.line(f"{submission.client}: {text}", level)
            return reply
        self.accepted(
            submission, queue_id, envelope.sender, envelope.size, len(envelope.recipients)
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def accepted(
        self, submission: Submission, queue_id: str, sender: str, size: int, nrcpt: int
    ) -> None:
        """Log and count one committed message (after its commit, before its 250)."""
        fields: dict[str, object] = {
            "client": submission.client,
            "from": f"<{sender}>",
            "size": size,
            "nrcpt": nrcpt,
        }
        if submission.login:
            fields["sasl_username"] = submission.login
        self.log.event(queue_id, "info", **fields)
        if self.metrics is not None:
            self.metrics.message_accepted(size)
