"""The subscription pricing module: NCE prices by market onto subscriptions (guide 5.2)."""
