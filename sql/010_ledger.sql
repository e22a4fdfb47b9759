-- idle-supervisor: the ledger (run once, after 001-009; running it again is harmless):
--   1. a finished ledger row never changes again;
--   2. [cluster]: the instance that holds a company hears of replay marks (`idle-supervisor
--      retry`, run on any machine), and `retry` can say which instance that is.
--
-- 1. Done rows.
-- A done row (processed, failed, expunged, duplicate, skipped) was handed over, or given up on,
-- exactly once. fenced_record_attempt's ON CONFLICT DO UPDATE did not look at the status: after a
-- `processed` row whose checkpoint write timed out, a refused FETCH of that UID turned it back
-- into `retrying`, and the next attempt handed the email over again as new (redelivered=false).
-- The plain REST write of tenant_proc/store/supabase.py had the same hole and is fixed there.
--
-- The done statuses live in ONE place, idle_supervisor_done_statuses() (sql/008), which
-- idle_supervisor_is_done() below asks, and every ledger function asks that: a new done status is
-- added there (and to DONE_STATUSES in tenant_proc/store/api.py, the Python side's one place),
-- nowhere else. Only an operator's
-- `idle-supervisor retry` turns a `failed` row into `replay` (tenant_proc/store/failed_ledger.py).
begin;

create or replace function public.idle_supervisor_is_done(p_status text)
returns boolean
language sql
immutable
set search_path = ''
as $$
    select coalesce(p_status = any (public.idle_supervisor_done_statuses()), false)
$$;

-- Count a failed attempt; returns the attempts so far. A done row is left exactly as it is (a
-- late failure of a finished email counts nothing) and its attempts are returned.
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
        set attempts = e.attempts + 1, error = excluded.error, status = 'retrying',
            message_id = coalesce(excluded.message_id, e.message_id),
            fencing_token = excluded.fencing_token
        where not public.idle_supervisor_is_done(e.status)
    returning attempts into n;
    if n is null then  -- the row is done: nothing was written
        select e.attempts into n from public.processed_emails e
         where e.company_id = p_company and e.folder = p_folder
           and e.uidvalidity = p_uidvalidity and e.uid = p_uid;
    end if;
    return n;
end
$$;

-- Finish a UID (a done status only) and move the checkpoint forward, in one transaction; a row
-- that is done already stays as it is (mark_done is idempotent).
create or replace function public.fenced_mark_done(p_company text, p_folder text,
                                                   p_uidvalidity bigint, p_uid bigint,
                                                   p_message_id text, p_status text,
                                                   p_error text, p_token bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    if not public.idle_supervisor_is_done(p_status) then
        raise exception using errcode = '22023',
            message = format('fenced_mark_done: %L is not a done status', p_status);
    end if;
    perform public.idle_supervisor_check_lease(p_company, p_token, false);
    insert into public.processed_emails as e
        (company_id, folder, uidvalidity, uid, message_id, status, error, fencing_token)
    values (p_company, p_folder, p_uidvalidity, p_uid, p_message_id, p_status, p_error, p_token)
    on conflict on constraint processed_emails_key do update
        set message_id = excluded.message_id, status = excluded.status, error = excluded.error,
            processed_at = now(), fencing_token = excluded.fencing_token
        where not public.idle_supervisor_is_done(e.status);
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

-- The 'handling' mark before a handler runs (sql/006); a done row is only reported.
create or replace function public.fenced_begin_attempt(p_company text, p_folder text,
                                                       p_uidvalidity bigint, p_uid bigint,
                                                       p_token bigint)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
    previous record;
begin
    perform public.idle_supervisor_check_lease(p_company, p_token, true);
    insert into public.processed_emails as e
        (company_id, folder, uidvalidity, uid, status, attempts, fencing_token)
    values (p_company, p_folder, p_uidvalidity, p_uid, 'handling', 0, p_token)
    on conflict on constraint processed_emails_key do nothing;
    if found then
        return jsonb_build_object('status', null, 'attempts', 0);
    end if;
    select e.status, e.attempts into previous
      from public.processed_emails e
     where e.company_id = p_company and e.folder = p_folder
       and e.uidvalidity = p_uidvalidity and e.uid = p_uid
       for update;
    if previous.status = 'handling' then
        previous.attempts := previous.attempts + 1;  -- the process before us died handling it
    end if;
    if not public.idle_supervisor_is_done(previous.status) then
        update public.processed_emails e
           set status = 'handling', attempts = previous.attempts, fencing_token = p_token
         where e.company_id = p_company and e.folder = p_folder
           and e.uidvalidity = p_uidvalidity and e.uid = p_uid;
    end if;
    return jsonb_build_object('status', previous.status, 'attempts', previous.attempts);
end
$$;

-- Asked before each handler call where fenced_begin_attempt is missing: is this UID finished?
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
                      and public.idle_supervisor_is_done(e.status));
end
$$;

-- 2. Replay marks in cluster mode. `retry` marks rows `replay` in the shared database and can
-- signal only the supervisor on its own machine, while another instance may hold the company's
-- lease. Every instance asks at each lease renewal (every lease_ttl / 3) which of the companies
-- it holds have marks their company process can claim (at or below its checkpoint, under the
-- current UIDVALIDITY: the same rows claim_replays takes), and forwards `replay` to those.
create or replace function public.cluster_replay_marks(p_instance text)
returns table (company_id text)
language sql
stable
set search_path = ''
as $$
    select distinct e.company_id
      from public.company_leases l
      join public.imap_checkpoints k on k.company_id = l.company_id
      join public.processed_emails e
        on e.company_id = k.company_id and e.folder = k.folder
       and e.uidvalidity = k.uidvalidity and e.uid <= k.last_uid
     where l.owner = p_instance and l.expires_at > now() and e.status = 'replay'
$$;

-- The instance holding a company's live lease (the database's clock): one row, or none.
create or replace function public.company_lease_holder(p_company text)
returns table (owner text)
language sql
stable
set search_path = ''
as $$
    select l.owner from public.company_leases l
     where l.company_id = p_company and l.owner is not null and l.expires_at > now()
$$;

-- (create or replace keeps the privileges sql/002 and sql/006 gave the functions above.)
revoke all on function
    public.idle_supervisor_is_done(text),
    public.cluster_replay_marks(text),
    public.company_lease_holder(text)
    from public, anon, authenticated;
grant execute on function
    public.idle_supervisor_is_done(text),
    public.cluster_replay_marks(text),
    public.company_lease_holder(text)
    to service_role;

commit;
