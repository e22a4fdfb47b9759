-- idle-supervisor schema, version 002: several supervisors share the companies through leases.
--
-- Run after 001_init.sql: psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/002_cluster.sql
-- Safe to run again: every statement is idempotent. Needed only with [cluster] enabled = true.
--
-- How it works: every supervisor instance heartbeats a row in supervisor_instances; each company
-- has at most one lease (owner instance, fencing token, expiry). An instance claims free or
-- expired leases up to its fair share and renews its own every lease_ttl/3. Every new claim takes
-- a fresh token from a sequence, and a tenant process sends its token with every checkpoint and
-- ledger write (the fenced_* functions): a write carrying an older token is refused, so a paused
-- or partitioned old owner cannot record anything after its company moved. All times are the
-- database's now(), never a host's clock.

begin;

create table if not exists public.supervisor_instances (
    instance_id text primary key,
    host        text,
    pid         integer,
    max_tenants integer not null default 0 check (max_tenants >= 0),  -- 0: no limit
    started_at  timestamptz not null default now(),
    last_seen   timestamptz not null default now()
);

-- Fencing tokens: strictly increasing across every claim of every company.
create sequence if not exists public.company_lease_token_seq;

-- One row per company that was ever claimed. owner null = free (released); token 0 = never
-- claimed. A lease whose expires_at has passed may be claimed by anyone.
create table if not exists public.company_leases (
    company_id text primary key references public.companies (id) on delete cascade,
    owner      text,
    token      bigint not null default 0,
    expires_at timestamptz not null default '-infinity',
    claimed_at timestamptz
);
create index if not exists company_leases_owner_idx on public.company_leases (owner);

-- Which token wrote a row (audit; the fenced functions fill it in). Null for non-cluster writes.
alter table public.imap_checkpoints add column if not exists fencing_token bigint;
alter table public.processed_emails add column if not exists fencing_token bigint;

alter table public.supervisor_instances enable row level security;
alter table public.company_leases enable row level security;
revoke all on public.supervisor_instances, public.company_leases from anon, authenticated;
grant select, insert, update, delete on public.supervisor_instances, public.company_leases
    to service_role;
revoke all on sequence public.company_lease_token_seq from anon, authenticated;
grant usage, select on sequence public.company_lease_token_seq to service_role;

-- Live instances (seen within ttl seconds) and how many unexpired leases each holds.
create or replace function public.cluster_instances(p_ttl double precision)
returns table (instance_id text, host text, pid integer, max_tenants integer,
               started_at timestamptz, last_seen_age double precision, held integer)
language sql
stable
set search_path = ''
as $$
    select i.instance_id, i.host, i.pid, i.max_tenants, i.started_at,
           extract(epoch from now() - i.last_seen)::double precision,
           (select count(*)::integer from public.company_leases l
             where l.owner = i.instance_id and l.expires_at > now())
      from public.supervisor_instances i
     where i.last_seen > now() - make_interval(secs => p_ttl)
     order by i.instance_id
$$;

-- Register/refresh this instance; answer what balancing needs in one round trip:
-- {"instances": [...cluster_instances...], "active": N companies, "claimable": M without a live lease}
create or replace function public.cluster_heartbeat(p_instance text, p_ttl double precision,
                                                    p_host text default null,
                                                    p_pid integer default null,
                                                    p_max_tenants integer default 0)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
    insert into public.supervisor_instances as i (instance_id, host, pid, max_tenants)
    values (p_instance, p_host, p_pid, coalesce(p_max_tenants, 0))
    on conflict (instance_id) do update
        set last_seen = now(), host = excluded.host, pid = excluded.pid,
            max_tenants = excluded.max_tenants;
    -- Rows of instances gone for a day are history, not members.
    delete from public.supervisor_instances where last_seen < now() - interval '1 day';
    return jsonb_build_object(
        'instances', coalesce((select jsonb_agg(to_jsonb(c)) from public.cluster_instances(p_ttl) c),
                              '[]'::jsonb),
        'active', (select count(*) from public.companies where active),
        'claimable', (select count(*) from public.companies c
                       where c.active and not exists (
                           select 1 from public.company_leases l
                            where l.company_id = c.id and l.owner is not null
                              and l.expires_at > now())));
end
$$;

-- Claim up to p_max free or expired leases of active companies. SKIP LOCKED: concurrent
-- claimers never wait for each other and never get the same company. Each claim takes a new
-- fencing token. Returns what was claimed.
create or replace function public.claim_companies(p_instance text, p_ttl double precision,
                                                  p_max integer)
returns table (company_id text, token bigint)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
    if p_max is null or p_max <= 0 then
        return;
    end if;
    -- A lease row for every active company (token 0: never claimed); racing inserts are no-ops.
    insert into public.company_leases (company_id)
    select c.id from public.companies c
     where c.active and not exists (select 1 from public.company_leases l where l.company_id = c.id)
    on conflict do nothing;
    return query
    with candidates as (
        select l.company_id
          from public.company_leases l
          join public.companies c on c.id = l.company_id
         where c.active
           and (l.owner is null or (l.expires_at <= now() and l.owner <> p_instance))
         order by l.company_id
         limit p_max
           for update of l skip locked
    )
    update public.company_leases l
       set owner = p_instance,
           token = nextval('public.company_lease_token_seq'),
           expires_at = now() + make_interval(secs => p_ttl),
           claimed_at = now()
      from candidates
     where l.company_id = candidates.company_id
    returning l.company_id, l.token;
end
$$;

-- Extend every lease I own, expired or not (an expired lease nobody else claimed still has my
-- token, so no other writer can have acted on it). Returns what I hold: a company missing from
-- the answer was taken over while I was paused or cut off, and must be stopped.
create or replace function public.renew_leases(p_instance text, p_ttl double precision)
returns table (company_id text, token bigint)
language sql
set search_path = ''
as $$
    update public.company_leases l
       set expires_at = now() + make_interval(secs => p_ttl)
     where l.owner = p_instance
    returning l.company_id, l.token
$$;

-- Give leases back (null: all of mine). Called only after the company's process has exited.
create or replace function public.release_leases(p_instance text, p_company_ids text[] default null)
returns integer
language sql
set search_path = ''
as $$
    with released as (
        update public.company_leases l
           set owner = null, expires_at = now()
         where l.owner = p_instance
           and (p_company_ids is null or l.company_id = any (p_company_ids))
        returning 1
    )
    select count(*)::integer from released
$$;

-- Clean shutdown: release everything and leave, so the others rebalance at once.
create or replace function public.cluster_leave(p_instance text)
returns integer
language plpgsql
set search_path = ''
as $$
declare
    n integer;
begin
    n := public.release_leases(p_instance, null);
    delete from public.supervisor_instances where instance_id = p_instance;
    return n;
end
$$;

-- The fence. Locks the lease row FOR SHARE, so a concurrent claim (FOR UPDATE) waits until this
-- write committed, and a write after the claim sees the new token. p_require_live also refuses
-- when the lease has expired: used before a handler runs, so an owner that stopped renewing does
-- not start work another instance may be about to take over.
create or replace function public.idle_supervisor_check_lease(p_company text, p_token bigint,
                                                              p_require_live boolean)
returns void
language plpgsql
set search_path = ''
as $$
declare
    lease record;
begin
    select l.owner, l.token, l.expires_at into lease
      from public.company_leases l where l.company_id = p_company for share;
    if not found or lease.token <> p_token or lease.owner is null then
        raise exception using errcode = 'PT409',
            message = format('lease lost: company %s is held under fencing token %s, this writer has %s',
                             p_company, coalesce(lease.token::text, 'none'), p_token);
    end if;
    if p_require_live and lease.expires_at <= now() then
        raise exception using errcode = 'PT409',
            message = format('lease lost: the lease of company %s (token %s) expired', p_company, p_token);
    end if;
end
$$;

-- Fenced state writes: same semantics as the plain REST writes of tenant_proc/store/supabase.py,
-- each one atomic (one transaction per call).
create or replace function public.fenced_save_checkpoint(p_company text, p_folder text,
                                                         p_uidvalidity bigint, p_last_uid bigint,
                                                         p_token bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    perform public.idle_supervisor_check_lease(p_company, p_token, false);
    insert into public.imap_checkpoints as k (company_id, folder, uidvalidity, last_uid, fencing_token)
    values (p_company, p_folder, p_uidvalidity, p_last_uid, p_token)
    on conflict (company_id, folder) do update
        set uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,
            fencing_token = excluded.fencing_token;
    return true;
end
$$;

-- Ledger row (insert, or finish a 'retrying' one; a done row stays) and the checkpoint
-- (forward only, same UIDVALIDITY; created when missing), in one transaction.
create or replace function public.fenced_mark_done(p_company text, p_folder text,
                                                   p_uidvalidity bigint, p_uid bigint,
                                                   p_message_id text, p_status text,
                                                   p_error text, p_token bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    perform public.idle_supervisor_check_lease(p_company, p_token, false);
    insert into public.processed_emails as e
        (company_id, folder, uidvalidity, uid, message_id, status, error, fencing_token)
    values (p_company, p_folder, p_uidvalidity, p_uid, p_message_id, p_status, p_error, p_token)
    on conflict on constraint processed_emails_key do update
        set message_id = excluded.message_id, status = excluded.status, error = excluded.error,
            processed_at = now(), fencing_token = excluded.fencing_token
        where e.status = 'retrying';
    update public.imap_checkpoints k
       set last_uid = p_uid, fencing_token = p_token
     where k.company_id = p_company and k.folder = p_folder
       and k.uidvalidity = p_uidvalidity and k.last_uid < p_uid;
    if not found then
        insert into public.imap_checkpoints (company_id, folder, uidvalidity, last_uid, fencing_token)
        values (p_company, p_folder, p_uidvalidity, p_uid, p_token)
        on conflict (company_id, folder) do nothing;
    end if;
    return true;
end
$$;

-- Count a failed handler attempt; returns the attempts so far.
create or replace function public.fenced_record_attempt(p_company text, p_folder text,
                                                        p_uidvalidity bigint, p_uid bigint,
                                                        p_message_id text, p_error text,
                                                        p_token bigint)
returns integer
language plpgsql
set search_path = ''
as $$
declare
    n integer;
begin
    perform public.idle_supervisor_check_lease(p_company, p_token, false);
    insert into public.processed_emails as e
        (company_id, folder, uidvalidity, uid, message_id, status, attempts, error, fencing_token)
    values (p_company, p_folder, p_uidvalidity, p_uid, p_message_id, 'retrying', 1, p_error, p_token)
    on conflict on constraint processed_emails_key do update
        set attempts = e.attempts + 1, error = excluded.error, fencing_token = excluded.fencing_token
    returning attempts into n;
    return n;
end
$$;

-- Asked before each handler call: is this UID finished? Refused once the lease is not live.
create or replace function public.fenced_is_done(p_company text, p_folder text,
                                                 p_uidvalidity bigint, p_uid bigint,
                                                 p_token bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    perform public.idle_supervisor_check_lease(p_company, p_token, true);
    return exists (select 1 from public.processed_emails e
                    where e.company_id = p_company and e.folder = p_folder
                      and e.uidvalidity = p_uidvalidity and e.uid = p_uid
                      and e.status in ('processed', 'failed'));
end
$$;

-- Functions are executable by PUBLIC by default: only the service role may call these.
revoke all on function
    public.cluster_instances(double precision),
    public.cluster_heartbeat(text, double precision, text, integer, integer),
    public.claim_companies(text, double precision, integer),
    public.renew_leases(text, double precision),
    public.release_leases(text, text[]),
    public.cluster_leave(text),
    public.idle_supervisor_check_lease(text, bigint, boolean),
    public.fenced_save_checkpoint(text, text, bigint, bigint, bigint),
    public.fenced_mark_done(text, text, bigint, bigint, text, text, text, bigint),
    public.fenced_record_attempt(text, text, bigint, bigint, text, text, bigint),
    public.fenced_is_done(text, text, bigint, bigint, bigint)
    from public, anon, authenticated;
grant execute on function
    public.cluster_instances(double precision),
    public.cluster_heartbeat(text, double precision, text, integer, integer),
    public.claim_companies(text, double precision, integer),
    public.renew_leases(text, double precision),
    public.release_leases(text, text[]),
    public.cluster_leave(text),
    public.idle_supervisor_check_lease(text, bigint, boolean),
    public.fenced_save_checkpoint(text, text, bigint, bigint, bigint),
    public.fenced_mark_done(text, text, bigint, bigint, text, text, text, bigint),
    public.fenced_record_attempt(text, text, bigint, bigint, text, text, bigint),
    public.fenced_is_done(text, text, bigint, bigint, bigint)
    to service_role;

commit;
