-- idle-supervisor: the "handling" mark for the Supabase state store (run once, after 001-003;
-- running it again is harmless).
--
-- Before a handler runs, the UID's ledger row is marked 'handling'. If the process dies, or a
-- store write fails, after the handler did its work but before the outcome was recorded, the
-- next attempt finds 'handling': the email is handed over as `redelivered`, and the lost
-- attempt is counted, so it is given up after max_attempts instead of running the handler about
-- once a second forever (the SQLite ledger has always had this mark).
--
-- fenced_begin_attempt is the cluster form (a fencing token; refused once the lease expired,
-- like fenced_is_done, which it replaces before each handler call). fenced_mark_done and
-- fenced_record_attempt are redefined so a 'handling' row can be finished or counted: a done
-- row stays as it is, and a counted failure goes back to 'retrying'.

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
    if previous.status not in ('processed', 'failed', 'expunged', 'duplicate') then
        update public.processed_emails e
           set status = 'handling', attempts = previous.attempts, fencing_token = p_token
         where e.company_id = p_company and e.folder = p_folder
           and e.uidvalidity = p_uidvalidity and e.uid = p_uid;
    end if;
    return jsonb_build_object('status', previous.status, 'attempts', previous.attempts);
end
$$;

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
        where e.status in ('retrying', 'handling');
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
    returning attempts into n;
    return n;
end
$$;

revoke all on function public.fenced_begin_attempt(text, text, bigint, bigint, bigint)
    from public, anon, authenticated;
grant execute on function public.fenced_begin_attempt(text, text, bigint, bigint, bigint)
    to service_role;

-- The done statuses of sql/003 (expunged, duplicate) finish a UID in cluster mode too.
-- (create or replace keeps the privileges sql/002 gave the function.)
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
                      and e.status in ('processed', 'failed', 'expunged', 'duplicate'));
end
$$;
