"""Message intake: from the bytes piped into ``sendmail`` to a spool file.

``intake.receive`` streams standard input into a file that starts with the
envelope (``envelope.Envelope``) and holds the message with CRLF line endings;
``addresses`` parses and checks mail addresses, ``aliases`` reads
``/etc/aliases``, ``headers`` holds the small pieces of RFC 5322 that the
intake writes itself (Date, encoded words).

Every module of this package is imported by the ``sendmail`` hot path, so none
may import anything at run time beyond a few cheap standard modules (``os``,
``sys``, ``time``, ``pwd``, ``binascii``, ``marshal``) and the project's
``errors``: no ``typing``, ``re``, ``dataclasses``, ``email`` or ``collections``.
This file itself imports nothing.
"""
