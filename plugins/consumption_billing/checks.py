"""What `config check` says about the module, beyond the types of its settings.

It reads Microsoft with the CSP module's partner connection, so that module must be enabled
with a connection (and the connections this module names must be its). The ``basic``
attribute set has no meter category, meter, resource group or tags: grouping by them, or a
description naming them, would bill every row under one empty line, so that is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

from halo_integrator_core import ModuleContext
from halo_integrator_core.billing import GroupBy

from .fetch import MODULE, connection_problems, csp_settings
from .settings import AttributeSet, ConsumptionBillingSettings

#: What the basic attribute set lacks, by grouping and by description placeholder.
NOT_IN_BASIC = {
    GroupBy.METER_CATEGORY: "MeterCategory",
    GroupBy.METER: "MeterCategory and MeterName",
    GroupBy.RESOURCE_GROUP: "ResourceGroup",
    GroupBy.TAG: "Tags",
}
PLACEHOLDERS_NOT_IN_BASIC = (
    "MeterCategory",
    "MeterName",
    "ResourceGroup",
    "Tag",
    "SubscriptionDescription",
)


def config_problems(context: ModuleContext) -> Iterator[str]:
    settings = context.settings
    if not isinstance(settings, ConsumptionBillingSettings):
        return
    key = f"modules.{MODULE}"
    if context.config is not None:
        yield from connection_problems(settings, csp_settings(context.config))
    if settings.attribute_set is AttributeSet.BASIC:
        for grouping in settings.group_by:
            if grouping in NOT_IN_BASIC:
                yield (
                    f"{key}.group_by: {grouping.value!r} needs {NOT_IN_BASIC[grouping]}, which "
                    'the "basic" attribute set leaves out: set attribute_set = "full", or group '
                    'by "customer" or "subscription"'
                )
        named = [p for p in PLACEHOLDERS_NOT_IN_BASIC if "{" + p + "}" in settings.description]
        if named:
            yield (
                f"{key}.description: {', '.join('{' + p + '}' for p in named)} would be empty: "
                'the "basic" attribute set leaves them out; set attribute_set = "full"'
            )
