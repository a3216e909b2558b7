"""The durable, maildir-style mail queue (DESIGN.md, "The queue").

``sendmail`` in queue mode writes each message once, into a file that becomes
the queue file, and exits 0 only when that file and its directory entry are
on disk::

    q = Queue(settings.general.queue_dir)
    with q.begin(queue_id) as pending:          # tmp/ID, or maildrop/.ID for other users
        envelope = intake.receive(stdin, pending.file, options)
        pending.commit()                         # fsync, link into queue/, fsync the folder, poke

The runner (``pysendmail.runner``) takes messages one at a time under a lock::

    for queue_id in q.ids():
        claim = q.claim(queue_id)                # None: another runner has it, or it is gone
        if claim is None: continue
        with claim:                              # claim.envelope, claim.state, claim.message()
            ...; claim.save(state)               # per-recipient state, replaced atomically
            claim.done()  # or claim.fail(), or just leave the block: still queued

and calls ``q.pickup(max_size)`` for the maildrop, ``q.clean_tmp(age)`` for
what crashed writers left, and ``q.watch().wait(timeout)`` to sleep until
poked. The admin tools use ``hold``, ``release``, ``requeue``, ``flush`` and
``delete``.

Queue ids come from ``pysendmail.message.intake.make_queue_id`` (time-sortable,
``[0-9A-Z]``); any 1 to 64 of ``[A-Za-z0-9_-]`` is accepted.

The modules: ``spool`` (layout, commit, claim, state files), ``state`` (the
per-recipient delivery state), ``pickup`` (the maildrop check), ``admin``
(hold, release, requeue, flush, delete), ``trigger`` (waking a watching
runner), ``setup`` (``pysendmail queue init``).

What this package must never do: acknowledge a message that is not durable,
hand one message to two runners at once, let a user other than the queue
owner read a queued message, trust a byte of a queue, maildrop or state file,
or import SMTP, ``email``, ``json`` (except in the state functions), ``typing``
or any other module that slows the ``sendmail`` hot path.

SECURITY: see ``spool`` and ``pickup``: files are opened ``O_NOFOLLOW`` and
checked with ``fstat``; maildrop files are copied, never renamed, after
checking type, links, size, completeness and submitter; queue files are 0600
in folders of 0700.
"""

from pysendmail.queue.commit import Pending
from pysendmail.queue.spool import Claim, NoSuchMessage, Queue, check_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.queue.trigger import Trigger

__all__ = [
    "Claim",
    "NoSuchMessage",
    "Pending",
    "Queue",
    "Trigger",
    "check_id",
    "make_queue_id",
]


def make_queue_id() -> str:
    """A new queue id (the intake's generator: 16 characters of ``[0-9A-Z]``, sortable by time)."""
    from pysendmail.message.intake import make_queue_id as make

    return make()


def __getattr__(name: str) -> object:
    # ``Trigger`` is the runner's: ``sendmail`` (which imports this package on
    # every call) only pokes, through ``Queue.poke``, and need not load it.
    if name == "Trigger":
        from pysendmail.queue.trigger import Trigger

        return Trigger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
