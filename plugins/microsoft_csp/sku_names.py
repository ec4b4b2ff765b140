"""Readable product names of common licence SKUs, by their part number.

Graph's subscribedSkus gives a part number (``SPE_E3``) but no name; these are the names
in Microsoft's "Product names and service plan identifiers for licensing" reference. An
unknown part number is shown as it is.
"""

from __future__ import annotations

PRODUCT_NAMES = {
    "AAD_PREMIUM": "Microsoft Entra ID P1",
    "AAD_PREMIUM_P2": "Microsoft Entra ID P2",
    "ATP_ENTERPRISE": "Microsoft Defender for Office 365 (Plan 1)",
    "DESKLESSPACK": "Office 365 F3",
    "EMS": "Enterprise Mobility + Security E3",
    "EMSPREMIUM": "Enterprise Mobility + Security E5",
    "ENTERPRISEPACK": "Office 365 E3",
    "ENTERPRISEPREMIUM": "Office 365 E5",
    "EXCHANGEENTERPRISE": "Exchange Online (Plan 2)",
    "EXCHANGESTANDARD": "Exchange Online (Plan 1)",
    "FLOW_FREE": "Microsoft Power Automate Free",
    "INTUNE_A": "Intune Plan 1",
    "MCOEV": "Microsoft Teams Phone Standard",
    "O365_BUSINESS": "Microsoft 365 Apps for business",
    "O365_BUSINESS_ESSENTIALS": "Microsoft 365 Business Basic",
    "O365_BUSINESS_PREMIUM": "Microsoft 365 Business Standard",
    "OFFICESUBSCRIPTION": "Microsoft 365 Apps for enterprise",
    "POWER_BI_PRO": "Power BI Pro",
    "POWER_BI_STANDARD": "Power BI (free)",
    "PROJECTPROFESSIONAL": "Project Plan 3",
    "SPB": "Microsoft 365 Business Premium",
    "SPE_E3": "Microsoft 365 E3",
    "SPE_E5": "Microsoft 365 E5",
    "SPE_F1": "Microsoft 365 F3",
    "STANDARDPACK": "Office 365 E1",
    "TEAMS_EXPLORATORY": "Microsoft Teams Exploratory",
    "VISIOCLIENT": "Visio Plan 2",
    "WIN_DEF_ATP": "Microsoft Defender for Endpoint P2",
}


def product_name(part_number: str) -> str:
    return PRODUCT_NAMES.get(part_number.upper(), part_number)
