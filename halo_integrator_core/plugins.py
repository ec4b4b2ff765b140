"""Finding, loading and listing plugins; per-module enabling.

Plugins are found through the ``halo_integrator`` entry-point group, one entry point per
module, named after the module. A module that is not enabled in the config has its entry
point blocked before anything is imported, so its code never runs. A plugin that fails to
import, or implements a hook that does not exist, is reported by name and left out; the
others carry on.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import pluggy
import structlog

from . import hookspecs
from .config import Config, ConfigError, structure_module_settings
from .context import module_context
from .hookspecs import PROJECT_NAME
from .models import ModuleSpec

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = PROJECT_NAME


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What `halo-integrator plugins` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    modules: tuple[str, ...]
    hooks: tuple[str, ...]
    enabled: bool
    loaded: bool
    error: str | None = None


@attrs.frozen(kw_only=True)
class ActiveModule:
    """An enabled module whose plugin loaded, with its structured settings."""

    spec: ModuleSpec
    plugin_name: str
    settings: Any
    interval_minutes: int

    @property
    def name(self) -> str:
        return self.spec.name


class PluginHost:
    """The pluggy plugin manager plus what the host knows about each plugin.

    Build it with `PluginHost.load(config)`; tests that register their own plugins build an
    empty one with ``load(config, entry_points=False)`` and call `register`.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._specs: dict[str, tuple[str, ModuleSpec]] = {}
        self._dist: dict[str, tuple[str | None, str | None]] = {}

    @classmethod
    def load(cls, config: Config, *, entry_points: bool = True) -> PluginHost:
        host = cls(config)
        if entry_points:
            host._load_entry_points()
        return host

    # -- loading ---------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in sorted(_entry_points(), key=lambda e: e.name):
            if ep.name in seen:
                log.warning("plugin.duplicate_entry_point", plugin=ep.name, value=ep.value)
                continue
            seen.add(ep.name)
            self._dist[ep.name] = _name_and_version(getattr(ep, "dist", None))
            if not self.config.module_enabled(ep.name):
                self.pm.set_blocked(ep.name)
                self._infos[ep.name] = self._info(ep.name, enabled=False, loaded=False)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # an import error of any kind stays that plugin's own
                self._fail(ep.name, f"import of {ep.value} failed: {type(exc).__name__}: {exc}")
                continue
            self.register(plugin, name=ep.name, entry_point=True)

    def register(self, plugin: object, *, name: str, entry_point: bool = False) -> bool:
        """Register ``plugin``; returns False (and records why) when it cannot be used."""
        if self.pm.is_blocked(name):
            self._fail(name, f"module {name!r} is disabled: its plugin may not be registered")
            return False
        if self.pm.has_plugin(name) or self.pm.is_registered(plugin):
            # Leave the plugin already registered, and what we know of it, as they are.
            log.error("plugin.duplicate", plugin=name)
            return False
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            self._fail(name, f"invalid plugin: {exc}")
            return False
        try:
            specs = list(self._declared_specs(plugin))
        except Exception as exc:
            self.pm.unregister(plugin)
            self._fail(name, f"declare_modules failed: {type(exc).__name__}: {exc}")
            return False
        names = [spec.name for spec in specs]
        if entry_point and name not in names:
            self.pm.unregister(plugin)
            self._fail(
                name,
                f"entry point {name!r} declares modules {names}: an entry point must be named "
                "after the module it provides, so that a disabled module is never imported",
            )
            return False
        clash = [n for n in names if n in self._specs]
        if clash:
            self.pm.unregister(plugin)
            self._fail(name, f"module(s) {clash} are already provided by another plugin")
            return False
        for spec in specs:
            self._specs[spec.name] = (name, spec)
        self._infos[name] = self._info(name, enabled=True, loaded=True)
        return True

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._specs = {k: v for k, v in self._specs.items() if v[0] != name}
        self._infos.pop(name, None)

    def _declared_specs(self, plugin: object) -> Iterator[ModuleSpec]:
        for impl in self.pm.hook.declare_modules.get_hookimpls():
            if impl.plugin is plugin:
                for spec in impl.function() or ():
                    if not isinstance(spec, ModuleSpec):
                        raise TypeError(f"declare_modules returned {spec!r}, not a ModuleSpec")
                    yield spec

    def _fail(self, name: str, error: str) -> None:
        log.error("plugin.failed", plugin=name, error=error)
        self._infos[name] = self._info(name, enabled=True, loaded=False, error=error)

    def _info(
        self, name: str, *, enabled: bool, loaded: bool, error: str | None = None
    ) -> PluginInfo:
        distribution, version = self._dist.get(name, (None, None))
        plugin = self.pm.get_plugin(name) if loaded else None
        hooks: tuple[str, ...] = ()
        modules: tuple[str, ...] = (name,)
        if plugin is not None:
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            modules = tuple(spec.name for spec in self._declared_specs(plugin))
            if distribution is None:
                distribution, version = _distribution_of(plugin)
        return PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            modules=modules,
            hooks=hooks,
            enabled=enabled,
            loaded=loaded,
            error=error,
        )

    # -- what was loaded -------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        return [self._infos[name] for name in sorted(self._infos)]

    def module_specs(self) -> dict[str, ModuleSpec]:
        return {name: spec for name, (_, spec) in self._specs.items()}

    def active_modules(self) -> dict[str, ActiveModule]:
        """Every enabled module with its settings; raises `ConfigError` listing all problems."""
        problems: list[str] = []
        active: dict[str, ActiveModule] = {}
        for name, module_config in self.config.modules.items():
            if module_config.enabled and name not in self._specs:
                info = self._infos.get(name)
                if info is not None and info.error:
                    problems.append(f"modules.{name}: the plugin failed to load: {info.error}")
                else:
                    known = ", ".join(sorted(self._infos)) or "none"
                    problems.append(
                        f"modules.{name}: no installed plugin provides this module "
                        f"(installed: {known})"
                    )
        for name, (plugin_name, spec) in sorted(self._specs.items()):
            if not self.config.module_enabled(name):
                continue
            try:
                settings = structure_module_settings(self.config, name, spec.settings_type)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            interval = self.config.modules[name].interval_minutes or spec.default_interval_minutes
            active[name] = ActiveModule(
                spec=spec, plugin_name=plugin_name, settings=settings, interval_minutes=interval
            )
        for module in active.values():
            problems.extend(self._module_problems(module))
        if problems:
            raise ConfigError(problems, source=self.config.source)
        return active

    def _module_problems(self, module: ActiveModule) -> list[str]:
        """What ``module``'s plugin finds wrong with the configuration (`check_config`)."""
        try:
            results = self.hook_for(module.name).check_config(
                context=module_context(self.config, module)
            )
            return [str(problem) for result in results for problem in result or ()]
        except Exception as exc:  # a broken check is reported, never a crash of the host
            log.exception("plugin.check_config_failed", module=module.name)
            return [
                f"modules.{module.name}: its plugin could not check the configuration: "
                f"{type(exc).__name__}: {exc}"
            ]

    def implements(self, module: str, hook: str) -> bool:
        """Whether the plugin providing ``module`` implements ``hook``."""
        plugin = self.pm.get_plugin(self._specs[module][0])
        return any(impl.plugin is plugin for impl in getattr(self.pm.hook, hook).get_hookimpls())

    def hook_for(self, module: str) -> Any:
        """The hook relay of the one plugin that provides ``module``.

        Calls through it reach that plugin alone, so a plugin never sees another module's
        tenants or webhooks.
        """
        plugin_name, _ = self._specs[module]
        owner = self.pm.get_plugin(plugin_name)
        others = [p for p in self.pm.get_plugins() if p is not owner]
        return _SubsetHooks(self.pm, others)


class _SubsetHooks:
    def __init__(self, pm: pluggy.PluginManager, others: list[object]) -> None:
        self._pm = pm
        self._others = others

    def __getattr__(self, name: str) -> Any:
        return self._pm.subset_hook_caller(name, remove_plugins=self._others)


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _name_and_version(
    dist: importlib.metadata.Distribution | None,
) -> tuple[str | None, str | None]:
    """A distribution's name and version, from the header lines of its ``METADATA``.

    ``dist.name`` and ``dist.version`` each parse the whole file with the email parser:
    for the three entry points of our own distribution, 14 ms of every command's start.
    Both are single-line headers of the core metadata, read here in one pass; a file
    without them goes the parser's way.
    """
    if dist is None:
        return None, None
    found: dict[str, str] = {}
    for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
        if not line:
            break  # the headers end at the first blank line; the description follows
        key, colon, value = line.partition(":")
        if colon and key in ("Name", "Version") and key not in found:
            found[key] = value.strip()
    if len(found) < 2:
        return dist.name, dist.version
    return found["Name"], found["Version"]


def _distribution_of(plugin: object) -> tuple[str | None, str | None]:
    module = getattr(plugin, "__module__", None) or getattr(plugin, "__name__", "")
    top = (module or "").split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def entry_point_names() -> list[str]:
    """Names of every module offered through entry points, without importing any."""
    return sorted({ep.name for ep in _entry_points()})
