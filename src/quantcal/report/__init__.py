"""The study report: numbers (collect), figures, tables, one self-contained HTML page."""
