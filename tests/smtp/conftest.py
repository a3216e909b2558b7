"""Fixtures for the SMTP client tests: the servers of ``tests.support.smtpd``."""

from tests.support.fixtures import certificates, scripted_server, smtpd, smtpd_factory

__all__ = ["certificates", "scripted_server", "smtpd", "smtpd_factory"]
