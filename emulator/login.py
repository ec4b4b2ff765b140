"""Endpoints of the emulator (being written)."""


def register(emulator) -> None:
    return None
def fault_token_error(kind):
    raise NotImplementedError(kind)
