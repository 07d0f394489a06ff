"""``python -m quantcal.cli``."""

from quantcal.cli import main

main()
