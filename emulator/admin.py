"""The emulator's own admin API: look at the world, change it, inject faults.

Not a Microsoft API: it is how a benchmark or a test in another process changes the world
between syncs (the same operations as `World`'s methods).

| method and path | does |
|---|---|
| ``GET /_admin/world`` | partners (with their app registrations) and customers, as JSON |
| ``POST /_admin/tenants/{t}/users`` | add a user (JSON body: user properties) |
| ``PATCH /_admin/tenants/{t}/users/{id}`` | change a user's properties |
| ``POST /_admin/tenants/{t}/users/{id}/disable`` | set ``accountEnabled`` false |
| ``DELETE /_admin/tenants/{t}/users/{id}[?hard=true]`` | soft-delete (or purge) a user |
| ``POST /_admin/tenants/{t}/users/{id}/restore`` | restore a soft-deleted user |
| ``POST /_admin/tenants/{t}/groups`` | add a security group (``{"displayName": ..., "members": [ids]}``) |
| ``POST /_admin/tenants/{t}/groups/{g}/members`` | ``{"id": member}``: add a user or group to a group |
| ``DELETE /_admin/tenants/{t}/groups/{g}/members/{member}`` | take a member out of a group |
| ``POST /_admin/change-users`` | ``{"fraction": 0.01}``: change that share of all users |
| ``POST /_admin/tenants/{t}/devices``, ``PATCH``/``DELETE .../devices/{id}`` | devices |
| ``POST /_admin/tenants/{t}/odd-serials`` | junk and duplicated serials (`World.give_odd_serials`); answers device id → serial |
| ``PUT /_admin/tenants/{t}/subscriptions/{id}/quantity`` | ``{"quantity": n}`` |
| ``POST /_admin/tenants/{t}/expire-delta`` | make the tenant's delta tokens expire |
| ``POST /_admin/faults``, ``DELETE /_admin/faults`` | inject a `Fault` (JSON of its fields), or clear all |
| ``GET /_admin/budget`` | Graph's budget per app per tenant (or null) and, per tenant, the requests admitted, throttled, and wasted (retries sent before the Retry-After already announced) |
| ``POST /_admin/budget/reset`` | zero those counters (the budget stays) |
"""

from __future__ import annotations

from typing import Any

import attrs
from werkzeug.wrappers import Request, Response

from .app import Emulator, json_response
from .world import World


def _body(request: Request) -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status=status)


def describe_world(world: World) -> dict[str, Any]:
    with world.lock:
        return {
            "seed": world.seed,
            "partners": [
                {
                    "tenant_id": p.tenant_id,
                    "name": p.name,
                    "partner_center_app": {
                        "client_id": p.partner_center_app.client_id,
                        "secret": p.partner_center_app.secret,
                    },
                    "gdap_app": {"client_id": p.gdap_app.client_id, "secret": p.gdap_app.secret},
                }
                for p in world.partners.values()
            ],
            "customers": [
                {
                    "tenant_id": c.tenant_id,
                    "name": c.name,
                    "domain": c.domain,
                    "partner_tenant": c.partner_tenant,
                    "reseller": c.reseller,
                    "gdap_status": c.gdap_status,
                    "consented": c.consented,
                    "users": sum(1 for u in c.users.values() if u.removed is None),
                    "devices": len(c.devices),
                    "subscriptions": [
                        {"id": s.id, "offer_name": s.offerName, "quantity": s.quantity}
                        for s in c.subscriptions.values()
                    ],
                }
                for c in world.customers.values()
            ],
        }


def register(emulator: Emulator) -> None:
    world = emulator.world
    route = emulator.route

    def guarded(handler):
        def run(emu: Emulator, request: Request, **values: Any) -> Response:
            try:
                return handler(emu, request, **values)
            except KeyError as exc:
                return _error(404, f"not found: {exc.args[0]}")
            except (AttributeError, ValueError, TypeError) as exc:
                return _error(400, str(exc))

        return run

    @route("/_admin/world", endpoint="admin.world")
    def world_view(emu: Emulator, request: Request) -> Response:
        return json_response(describe_world(world))

    @route("/_admin/tenants/<tenant>/users", endpoint="admin.add_user", methods=("POST",))
    @guarded
    def add_user(emu: Emulator, request: Request, tenant: str) -> Response:
        user = world.add_user(tenant, **_body(request))
        return json_response(
            {"id": user.id, "userPrincipalName": user.userPrincipalName}, status=201
        )

    @route(
        "/_admin/tenants/<tenant>/users/<user_id>",
        endpoint="admin.user",
        methods=("PATCH", "DELETE"),
    )
    @guarded
    def user(emu: Emulator, request: Request, tenant: str, user_id: str) -> Response:
        if request.method == "PATCH":
            world.modify_user(tenant, user_id, **_body(request))
        elif request.args.get("hard") == "true":
            world.hard_delete_user(tenant, user_id)
        else:
            world.soft_delete_user(tenant, user_id)
        return Response(status=204)

    @route(
        "/_admin/tenants/<tenant>/users/<user_id>/<action>",
        endpoint="admin.user_action",
        methods=("POST",),
    )
    @guarded
    def user_action(
        emu: Emulator, request: Request, tenant: str, user_id: str, action: str
    ) -> Response:
        actions = {"disable": world.disable_user, "restore": world.restore_user}
        if action not in actions:
            return _error(404, f"no action {action!r}: use disable or restore")
        actions[action](tenant, user_id)
        return Response(status=204)

    @route("/_admin/tenants/<tenant>/groups", endpoint="admin.add_group", methods=("POST",))
    @guarded
    def add_group(emu: Emulator, request: Request, tenant: str) -> Response:
        body = _body(request)
        name = body.pop("displayName", None)
        if not isinstance(name, str) or not name:
            return _error(400, "a group needs a displayName")
        group = world.add_group(tenant, name, **body)
        return json_response({"id": group.id, "displayName": group.displayName}, status=201)

    @route(
        "/_admin/tenants/<tenant>/groups/<group_id>/members",
        endpoint="admin.add_member",
        methods=("POST",),
    )
    @guarded
    def add_member(emu: Emulator, request: Request, tenant: str, group_id: str) -> Response:
        member = _body(request).get("id")
        if not isinstance(member, str):
            return _error(400, 'give the member as {"id": "<user or group id>"}')
        world.add_member(tenant, group_id, member)
        return Response(status=204)

    @route(
        "/_admin/tenants/<tenant>/groups/<group_id>/members/<member_id>",
        endpoint="admin.remove_member",
        methods=("DELETE",),
    )
    @guarded
    def remove_member(
        emu: Emulator, request: Request, tenant: str, group_id: str, member_id: str
    ) -> Response:
        world.remove_member(tenant, group_id, member_id)
        return Response(status=204)

    @route("/_admin/change-users", endpoint="admin.change_users", methods=("POST",))
    @guarded
    def change_users(emu: Emulator, request: Request) -> Response:
        changed = world.change_users(float(_body(request).get("fraction", 0.01)))
        return json_response({"changed": len(changed)})

    @route("/_admin/tenants/<tenant>/devices", endpoint="admin.add_device", methods=("POST",))
    @guarded
    def add_device(emu: Emulator, request: Request, tenant: str) -> Response:
        device = world.add_device(tenant, **_body(request))
        return json_response({"id": device.id}, status=201)

    @route(
        "/_admin/tenants/<tenant>/devices/<device_id>",
        endpoint="admin.device",
        methods=("PATCH", "DELETE"),
    )
    @guarded
    def device(emu: Emulator, request: Request, tenant: str, device_id: str) -> Response:
        if request.method == "PATCH":
            world.change_device(tenant, device_id, **_body(request))
        else:
            world.remove_device(tenant, device_id)
        return Response(status=204)

    @route("/_admin/tenants/<tenant>/odd-serials", endpoint="admin.odd_serials", methods=("POST",))
    @guarded
    def odd_serials(emu: Emulator, request: Request, tenant: str) -> Response:
        return json_response(world.give_odd_serials(tenant))

    @route(
        "/_admin/tenants/<tenant>/subscriptions/<subscription_id>/quantity",
        endpoint="admin.quantity",
        methods=("PUT",),
    )
    @guarded
    def quantity(emu: Emulator, request: Request, tenant: str, subscription_id: str) -> Response:
        from .partner_center import notify_subscription_updated

        world.set_quantity(tenant, subscription_id, int(_body(request)["quantity"]))
        customer = world.customer(tenant)
        # A change made elsewhere (the Partner Center portal) is announced by webhook too.
        notify_subscription_updated(
            emu, customer.partner_tenant, customer.tenant_id, subscription_id
        )
        return Response(status=204)

    @route(
        "/_admin/tenants/<tenant>/expire-delta", endpoint="admin.expire_delta", methods=("POST",)
    )
    @guarded
    def expire_delta(emu: Emulator, request: Request, tenant: str) -> Response:
        world.expire_delta_tokens(tenant)
        return Response(status=204)

    @route("/_admin/faults", endpoint="admin.faults", methods=("GET", "POST", "DELETE"))
    @guarded
    def faults(emu: Emulator, request: Request) -> Response:
        if request.method == "POST":
            fault = emu.inject(**_body(request))
            return json_response(attrs.asdict(fault), status=201)
        if request.method == "DELETE":
            emu.clear_faults()
            return Response(status=204)
        return json_response([attrs.asdict(f) for f in emu.faults])

    @route("/_admin/budget", endpoint="admin.budget")
    def budget(emu: Emulator, request: Request) -> Response:
        return json_response(emu.budget.snapshot())

    @route("/_admin/budget/reset", endpoint="admin.budget_reset", methods=("POST",))
    def budget_reset(emu: Emulator, request: Request) -> Response:
        emu.budget.reset()
        return Response(status=204)
