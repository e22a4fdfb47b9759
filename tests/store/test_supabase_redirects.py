"""Issue 22 item 12: the Supabase clients (tenant_proc/http_clients/supabase.py) never follow a
redirect. httpx would send the apikey and Authorization headers, the service-role key, on to
whatever address a redirect names; a 3xx is an error that says what to fix instead.

Two real HTTP servers (tests/servers/hostile_http.py): one answers every request with a 307 to
the other, which records what reaches it.
"""
from __future__ import annotations

import pytest
from postgrest.exceptions import APIError

from tenant_proc.http_clients.supabase import close_client, describe_error, make_client
from tests.servers.hostile_http import Answer, HostileHttp

KEY = "service-role-key-0123456789"


@pytest.mark.parametrize("total_timeout", [None, 3.0], ids=["tenant-source", "tenant-process"])
def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(total_timeout):
    with HostileHttp(Answer(200, b"[]")) as elsewhere:
        redirect = Answer(307, b"", headers=(("Location", f"{elsewhere.url}/rest/v1/companies"),))
        with HostileHttp(redirect) as supabase:
            client = make_client(supabase.url, KEY, timeout=3.0, total_timeout=total_timeout)
            try:
                with pytest.raises(APIError) as refused:
                    client.table("companies").select("*").execute()
            finally:
                close_client(client)
            assert len(supabase.seen()) == 1
        assert elsewhere.seen() == [], "the request, with the key, followed the redirect"
    line = describe_error(refused.value, KEY)
    assert "307" in line and "redirect: not followed" in line and "SUPABASE_URL" in line
    assert KEY not in line
