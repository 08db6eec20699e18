"""The staff console page: a shell of HTML whose script fills it from the console WebSocket."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .access import END_PERMISSION, FOLLOW_PERMISSION


@login_required(login_url="admin:login")
def console(request: HttpRequest) -> HttpResponse:
    """Anonymous visitors go to the admin's login page; signed-in non-staff get a plain 403.

    Not staff_member_required: it would send a signed-in non-staff user back to a login page they
    have already passed, with no word on why.
    """
    if not (request.user.is_active and request.user.is_staff):
        raise PermissionDenied("The console is for staff members.")
    # The socket checks both again for every action; the page only leaves out what would be refused.
    context = {
        "can_follow": request.user.has_perm(FOLLOW_PERMISSION),
        "can_end": request.user.has_perm(END_PERMISSION),
    }
    return render(request, "console/index.html", context)
