"""A faithful local Microsoft cloud for tests, the demo and benchmarks.

Login (Entra ID), Partner Center, Microsoft Graph, partner billing exports and the pricing
API, served over HTTPS on loopback from a generated `World`, with faults on demand. Each
endpoint names the Microsoft documentation page its payloads follow.
"""

from .app import Emulator, Fault
from .server import EmulatorServer
from .world import World, generate

__all__ = ["Emulator", "EmulatorServer", "Fault", "World", "generate"]
