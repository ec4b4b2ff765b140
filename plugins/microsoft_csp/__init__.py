"""The Microsoft CSP module: Partner Center and Microsoft Graph into the PSA."""
