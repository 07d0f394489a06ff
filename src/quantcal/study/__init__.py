"""Study files and the study runner (``quantcal run``)."""
