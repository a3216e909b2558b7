"""``python -m pysendmail``: the sendmail command."""

import sys

from pysendmail.cli import main

sys.exit(main(["sendmail", *sys.argv[1:]]))
