"""The consumption billing module: Azure usage into recurring-invoice lines (guide 11)."""
