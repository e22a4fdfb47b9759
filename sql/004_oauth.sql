-- idle-supervisor: OAuth2 sign-in (issue 11). Run once, after 001-003; running it again is harmless.
--
-- companies gets the same keys a config file's [[tenant]] / [tenant.oauth] has:
--   imap_auth                    password (default) | xoauth2 | oauthbearer
--   oauth                        jsonb: the non-secret [tenant.oauth] keys: provider, flow, tenant,
--                                client_id, subject, command (a JSON array), token_url, scope,
--                                token_ca_file, token_timeout, and *_env names if the secrets
--                                come from the supervisor's environment instead of the columns
--                                (command, *_env and *_file keys are refused unless the config
--                                says [tenants] trust_rows = true: a row is not the operator)
--   oauth_client_secret          the client secret (microsoft client_credentials, google refresh_token)
--   oauth_refresh_token          the refresh token from the customer's consent (the "seed")
--   oauth_service_account_json   google service_account: the key file's JSON
--   oauth_certificate            microsoft certificate credential: PEM, private key + certificate
-- imap_password is no longer required (OAuth companies have none).
--
-- oauth_tokens holds the refresh token in use after Microsoft rotated it, written before the old
-- one is dropped, with a hash of the seed it grew from: a new oauth_refresh_token (re-consent)
-- takes over from a stored one automatically.
begin;

alter table public.companies
    add column if not exists imap_auth text not null default 'password',
    add column if not exists oauth jsonb,
    add column if not exists oauth_client_secret text,
    add column if not exists oauth_refresh_token text,
    add column if not exists oauth_service_account_json text,
    add column if not exists oauth_certificate text;
alter table public.companies alter column imap_password drop not null;
alter table public.companies drop constraint if exists companies_imap_auth_check;
alter table public.companies add constraint companies_imap_auth_check
    check (imap_auth in ('password', 'xoauth2', 'oauthbearer'));

create table if not exists public.oauth_tokens (
    company_id    text primary key references public.companies (id) on delete cascade,
    refresh_token text not null,
    seed_hash     text not null,
    updated_at    timestamptz not null default now()
);

alter table public.oauth_tokens enable row level security;
revoke all on public.oauth_tokens from anon, authenticated;
grant select, insert, update, delete on public.oauth_tokens to service_role;

commit;
