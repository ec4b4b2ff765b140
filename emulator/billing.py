"""Endpoints of the emulator (being written)."""


def register(emulator) -> None:
    return None
