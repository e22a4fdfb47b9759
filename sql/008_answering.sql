-- idle-supervisor: what an answering service needs (issue 23). Run once, after 001-007; running
-- it again is harmless.
--
-- 1. The default table of tenant_proc.handlers:supabase_insert gets the six answering fields
--    (all nullable: rows written before this migration keep NULL):
--      reply_to     jsonb    the Reply-To addresses, as "to"
--      in_reply_to  text     the In-Reply-To message id, as written (<...>)
--      references   jsonb    the References message ids, in order (at most 100)
--      list_id      text     the List-Id header
--      auto         text     bounce | auto_reply | auto_generated | list | bulk | NULL (a person)
--      from_self    boolean  the From address is the mailbox's own
--    A table copied from emails before this migration needs the same columns; without them
--    supabase_insert still writes its rows (without these) and logs one warning.
-- 2. companies gets
--      addresses    text[]   the mailbox's other addresses and aliases (from_self compares the
--                            From address with imap_username and these)
--      skip         text[]   classes kept from the handler for this company (bounce, auto_reply,
--                            auto_generated, list, bulk, self); NULL: the [imap] skip of the
--                            config; '{}': none
-- 3. The ledger status `skipped` (a class `skip` kept from the handler; the class is the row's
--    error). The done statuses now live in one function, idle_supervisor_done_statuses(): the
--    status check and every function that asks "is this UID finished?" read it, so a later
--    status is added there alone.

begin;

alter table public.emails add column if not exists reply_to jsonb;
alter table public.emails add column if not exists in_reply_to text;
alter table public.emails add column if not exists "references" jsonb;
alter table public.emails add column if not exists list_id text;
alter table public.emails add column if not exists auto text;
alter table public.emails add column if not exists from_self boolean;

alter table public.companies add column if not exists addresses text[];
alter table public.companies add column if not exists skip text[];

-- A ledger row in one of these is finished: handed over (or given up on) once, never again
-- (tenant_proc/store/api.py DONE_STATUSES is the same list for the SQLite ledger).
create or replace function public.idle_supervisor_done_statuses()
returns text[]
language sql
immutable
set search_path = ''
as $$
    select array['processed', 'failed', 'expunged', 'duplicate', 'skipped']::text[]
$$;

alter table public.processed_emails drop constraint if exists processed_emails_status_check;
alter table public.processed_emails add constraint processed_emails_status_check
    check (status in ('retrying', 'handling', 'replay')
           or status = any (public.idle_supervisor_done_statuses()));

-- sql/006's fenced_begin_attempt and fenced_is_done, reading the done statuses from the function.
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
    if not (previous.status = any (public.idle_supervisor_done_statuses())) then
        update public.processed_emails e
           set status = 'handling', attempts = previous.attempts, fencing_token = p_token
         where e.company_id = p_company and e.folder = p_folder
           and e.uidvalidity = p_uidvalidity and e.uid = p_uid;
    end if;
    return jsonb_build_object('status', previous.status, 'attempts', previous.attempts);
end
$$;

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
                      and e.status = any (public.idle_supervisor_done_statuses()));
end
$$;

revoke all on function public.idle_supervisor_done_statuses() from public, anon, authenticated;
grant execute on function public.idle_supervisor_done_statuses() to service_role;

commit;
