"""The consumption billing module: Azure usage into recurring-invoice lines (guide 11).

The plugin reads Graph's partner billing export with the CSP module's partner connection
(`fetch`, `export`) and translates each usage record (`usage`); the core maps, groups,
prices and writes the lines (`halo_integrator_core.billing`).
"""
